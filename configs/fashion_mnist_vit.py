"""A small ViT (patch 4, 7x7 tokens, ~0.4M parameters) trained from scratch on Fashion-MNIST.

    python -m experiments.train --config configs/fashion_mnist_vit.py --workdir runs/fmnist_vit
"""
from attn_jax.train.config import base_config
from configs.common import fashion_mnist_classifier


def get_config():
  c = base_config()
  c.model.name = "vit"
  c.model.patch_size = 4
  c.model.width = 96
  c.model.depth = 6
  c.model.num_heads = 4
  c.model.mlp_dim = 192
  c.model.dropout_rate = 0.0
  c.model.drop_path_rate = 0.1
  fashion_mnist_classifier(c)
  return c
