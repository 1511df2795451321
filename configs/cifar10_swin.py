"""A small Swin Transformer (patch 2, window 4, Swin-T widths) on CIFAR-10, 200 epochs; data,
augmentation and optimiser as configs/cifar10_vit.py.

    python -m experiments.train --config configs/cifar10_swin.py --workdir runs/cifar10_swin
"""
import ml_collections

from configs import cifar10_vit


def get_config():
  c = cifar10_vit.get_config()
  c.model = ml_collections.ConfigDict({"name": "swin", "patch_size": 2, "window_size": 4,
                                       "width": 96, "depth": (2, 2, 6, 2),
                                       "num_heads": (3, 6, 12, 24), "drop_path_rate": 0.1})
  c.anchor.value = 90.0
  c.anchor.source = "Swin-T (window 4) from scratch on CIFAR-10"
  return c
