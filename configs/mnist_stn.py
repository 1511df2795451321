"""MNIST with random rotation (+-45 degrees) and translation (+-4 px on a 36x36 canvas) applied to
train AND test images: a CNN with (`:stn`, default) or without (`:cnn`) a Spatial Transformer.

    python -m experiments.train --config configs/mnist_stn.py:stn --workdir runs/mnist_rt_stn
    python -m experiments.train --config configs/mnist_stn.py:cnn --workdir runs/mnist_rt_cnn

Each test image gets one fixed warp (seeded by its bytes), so both models see the same test set.
Anchor (Jaderberg et al. 2015): the STN variant has a lower test error than the same CNN alone.
"""
from attn_jax.train.config import base_config


def get_config(arg: str | None = None):
  arg = arg or "stn"
  if arg not in ("stn", "cnn"):
    raise ValueError(f"config argument must be 'stn' or 'cnn', got '{arg}'.")
  c = base_config()
  c.model.name = "stn_cnn" if arg == "stn" else "cnn"
  c.model.widths = (16, 32)
  c.model.mlp_dim = 128
  c.model.dropout_rate = 0.3
  if arg == "stn":
    c.model.stn_widths = (8, 16)
    c.model.stn_mlp_dim = 32
  c.data.source = "local"
  c.data.name = "mnist"
  c.data.path = "../shared/data/mnist"
  c.data.rotate = 45.0
  c.data.translate = 4
  c.data.canvas = 36
  c.data.mean, c.data.std = (0.0827,), (0.2541,)   # MNIST statistics diluted by the 36x36 canvas
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 2350   # 5 epochs
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.best_metric = "eval_accuracy"
  c.anchor.metric = "error"
  c.anchor.source = "STN paper: the STN variant has lower error than the plain CNN"
  return c
