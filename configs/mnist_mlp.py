"""MLP baseline on MNIST from the local IDX files (offline)."""
from attn_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model.name = "mlp"
  c.model.widths = (256,)
  c.data.source = "local"
  c.data.name = "mnist"
  c.data.path = "../shared/data/mnist"
  c.data.mean, c.data.std = (0.1307,), (0.3081,)
  c.batch_size = 128
  c.num_steps = 2000
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.best_metric = "eval_accuracy"
  return c
