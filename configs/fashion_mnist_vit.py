"""A small ViT (patch 4, 7x7 tokens, ~0.4M parameters) trained from scratch on Fashion-MNIST.

    python -m experiments.train --config configs/fashion_mnist_vit.py --workdir runs/fmnist_vit
"""
from attn_jax.train.config import base_config


def fashion_mnist_data(c) -> None:
  """The local IDX files, normalization and crop + flip (shared with the Swin and ResNet configs)."""
  c.data.source = "local"
  c.data.name = "fashion_mnist"
  c.data.path = "../shared/data/fashion_mnist"
  c.data.mean, c.data.std = (0.2860,), (0.3530,)
  c.data.crop_padding = 2
  c.data.flip = True


def classifier_defaults(c) -> None:
  """Data, optimiser and anchor shared by the Fashion-MNIST ViT and Swin configs."""
  fashion_mnist_data(c)
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 300
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 4700   # 10 epochs
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.best_metric = "eval_accuracy"
  c.anchor.metric = "accuracy"
  c.anchor.value = 92.3
  c.anchor.source = "small ViT from scratch, patch 4, ~0.2M params, 200 epochs"


def get_config():
  c = base_config()
  c.model.name = "vit"
  c.model.patch_size = 4
  c.model.hidden = 96
  c.model.depth = 6
  c.model.num_heads = 4
  c.model.mlp_dim = 192
  c.model.dropout = 0.0
  c.model.drop_path_rate = 0.1
  classifier_defaults(c)
  return c
