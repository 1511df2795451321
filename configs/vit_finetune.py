r"""Fine-tuning a pretrained ViT at a new resolution: the Fashion-MNIST ViT of
configs/fashion_mnist_vit.py (patch 4, 28x28 images: a 7x7 patch grid) on MNIST digits shifted
+-4 px on a 36x36 canvas (a 9x9 grid: the position table is resampled 7x7 -> 9x9), with the
patch embedding frozen and a fresh head (digits are new classes).

    python -m experiments.train --config configs/fashion_mnist_vit.py --workdir runs/fmnist_vit
    python -c "from attn_jax import pretrained; \
        pretrained.export_run('runs/fmnist_vit', 'runs/fmnist_vit.safetensors')"
    python -m experiments.train --config configs/vit_finetune.py --workdir runs/vit_finetune \
        --config.init_from=runs/fmnist_vit.safetensors

`config.init_from` takes any checkpoint `attn_jax.pretrained.load` reads (timm
.safetensors / .pth, big_vision .npz) whose architecture matches `config.model`; it is read
at the start of a fresh run only (a resumed run restores its own checkpoint). Without it
the run trains from scratch.
"""
from attn_jax.train.config import base_config
from configs import fashion_mnist_vit


def get_config():
  c = base_config()
  c.model = fashion_mnist_vit.get_config().model
  c.init_from = ""                  # e.g. runs/fmnist_vit.safetensors
  c.init_from_head = False          # new classes: a fresh head
  c.freeze = r"^embedding/"         # the patch embedding keeps its pretrained filters
  c.data.source = "local"
  c.data.name = "mnist"
  c.data.path = "../shared/data/mnist"
  c.data.translate = 4
  c.data.canvas = 36
  c.data.mean, c.data.std = (0.0827,), (0.2541,)   # MNIST statistics diluted by the canvas
  c.optim.name = "adamw"
  c.optim.learning_rate = 5e-4
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 100
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 940   # 2 epochs
  c.eval_every = 470
  c.checkpoint_every = 470
  c.best_metric = "eval_accuracy"
  return c
