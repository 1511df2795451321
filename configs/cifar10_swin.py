"""A small Swin Transformer (patch 2, window 4, Swin-T widths) on CIFAR-10, 200 epochs; data,
augmentation and schedule as configs/cifar10_vit.py; AdamW with weight decay 0.05 and drop path
0.1 as in the Swin paper's ImageNet recipe, gradients clipped at norm 1.

    python -m experiments.train --config configs/cifar10_swin.py --workdir runs/cifar10_swin
"""
import ml_collections

from configs import cifar10_vit


def get_config():
  c = cifar10_vit.get_config()
  c.model = ml_collections.ConfigDict({"name": "swin", "patch_size": 2, "window_size": 4,
                                       "width": 96, "depth": (2, 2, 6, 2),
                                       "num_heads": (3, 6, 12, 24), "drop_path_rate": 0.1})
  c.optim.name, c.optim.weight_decay, c.optim.grad_clip_norm = "adamw", 0.05, 1.0
  c.anchor.value = 90.0
  c.anchor.source = "Swin-T (window 4) from scratch on CIFAR-10"
  return c
