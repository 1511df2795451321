"""A small Swin Transformer (patch 2, window 7, 3 stages) trained from scratch on Fashion-MNIST.

    python -m experiments.train --config configs/fashion_mnist_swin.py --workdir runs/fmnist_swin
"""
from attn_jax.train.config import base_config
from configs.common import fashion_mnist_classifier


def get_config():
  c = base_config()
  c.model.name = "swin"
  c.model.patch_size = 2         # 14x14 tokens, windows of 7x7: 4 windows, then 1
  c.model.window_size = 7
  c.model.width = 48
  c.model.depth = (2, 2, 2)
  c.model.num_heads = (2, 4, 8)
  c.model.mlp_ratio = 2.0
  c.model.drop_path_rate = 0.1
  fashion_mnist_classifier(c)
  return c
