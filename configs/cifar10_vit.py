"""A small ViT (7 layers, width 384, 12 heads, patch 4) on CIFAR-10, 200 epochs: the anchor's recipe
(omihub777/ViT-CIFAR, 90.92%): random crop + flip, the CIFAR-10 AutoAugment policy, label
smoothing 0.1, no dropout, Adam with L2 weight decay 5e-5, batch 128, 5 warmup epochs, then
cosine from 1e-3 to 1e-5. The anchor's "patch 8" is 8 x 8 patches per image: 4 x 4 pixels.

    python -m experiments.train --config configs/cifar10_vit.py --workdir runs/cifar10_vit

Reads the JPEG tar in `../shared/data/cifar10_jpg`; `--config.data.source=tfds
--config.data.name=cifar10` uses the tfds catalog instead. 200 epochs is a GPU/TPU run; on a
2-core CPU pass e.g. `--config.num_steps=2000` for a short run (and say so in the results).
"""
from attn_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model.name = "vit"
  c.model.patch_size = 4
  c.model.width = 384
  c.model.depth = 7
  c.model.num_heads = 12
  c.model.mlp_dim = 384
  c.model.dropout_rate = 0.0
  c.model.drop_path_rate = 0.0
  c.data.source = "local"
  c.data.name = "cifar10"
  c.data.path = "../shared/data/cifar10_jpg"
  c.data.mean = (0.4914, 0.4822, 0.4465)
  c.data.std = (0.2470, 0.2435, 0.2616)
  c.data.crop_padding = 4
  c.data.flip = True
  c.data.augment_policy = "autoaugment"   # attn_jax.data.autoaugment: the CIFAR-10 policy
  c.optim.name = "adam"               # weight decay added to the gradient (L2), as torch's Adam
  c.optim.learning_rate = 1e-3
  c.optim.end_lr_factor = 0.01        # 1e-5 at the end
  c.optim.weight_decay = 5e-5
  c.optim.warmup_steps = 1955         # 5 epochs
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 78_200   # 200 epochs of 50,000 images
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.best_metric = "eval_accuracy"
  c.anchor.metric = "accuracy"
  c.anchor.value = 90.9
  c.anchor.source = "ViT 7 layers/384 hidden, AutoAugment + label smoothing, 200 epochs"
  return c
