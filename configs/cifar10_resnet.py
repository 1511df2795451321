"""ResNet-18 (width 64, CIFAR stem) on CIFAR-10, 200 epochs: the anchor's recipe (random crop
with 4 px padding + flip, SGD momentum 0.9, learning rate 0.1 with cosine decay, weight decay
5e-4, batch 128), which reports 93% test accuracy.

    python -m experiments.train --config configs/cifar10_resnet.py --workdir runs/cifar10_resnet

`:se`, `:eca` or `:cbam` put that attention in every residual block (default `none`). Reads
the JPEG tar in `../shared/data/cifar10_jpg`. 200 epochs is a GPU/TPU run; the crops and
flips are drawn per batch (`data.batch_augment`) so the input keeps up with a GPU.
"""
from configs import cifar10_vit, fashion_mnist_resnet


def get_config(arg: str | None = None):
  c = fashion_mnist_resnet.get_config(arg or "none")   # model and SGD recipe
  c.model.width = 64
  c.data = cifar10_vit.get_config().data
  c.data.augment_policy = ""       # crop + flip only, as the anchor
  c.data.batch_augment = True      # drawn per batch: the input keeps up with a GPU
  c.optim.warmup_steps = 0
  c.label_smoothing = 0.0
  c.num_steps = 78_200             # 200 epochs of 50,000 images at batch 128
  c.eval_every = 2000
  c.checkpoint_every = 1000
  c.anchor.value = 93.0
  c.anchor.source = "ResNet18 on CIFAR-10 (SGD 0.1, cosine, 200 epochs)"
  return c
