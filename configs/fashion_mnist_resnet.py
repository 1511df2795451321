"""ResNet-18-style CNN with CBAM attention on Fashion-MNIST (local IDX files).

Also reads Debian's `dataset-fashion-mnist`: `--config.data.path=/usr/share/datasets/fashion-mnist`.
`--config.model.attention=none|se|eca|cbam` compares the channel/spatial attentions.
"""
from attn_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet"
  c.model.stage_sizes = (2, 2, 2, 2)
  c.model.width = 32
  c.model.attention = "cbam"
  c.data.source = "local"
  c.data.name = "fashion_mnist"
  c.data.path = "../shared/data/fashion_mnist"
  c.data.mean, c.data.std = (0.2860,), (0.3530,)
  c.data.crop_padding = 2
  c.data.flip = True
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 200
  c.batch_size = 128
  c.num_steps = 5000
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.best_metric = "eval_accuracy"
  return c
