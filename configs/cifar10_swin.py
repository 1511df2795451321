"""A small Swin Transformer (patch 2, window 4) on CIFAR-10 from the local JPEG tar."""
from configs import cifar10_vit


def get_config():
  c = cifar10_vit.get_config()
  c.model = type(c.model)({"name": "swin", "patch_size": 2, "window_size": 4, "embed_dim": 96,
                           "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24),
                           "drop_path_rate": 0.1})
  return c
