"""ViT (patch 4) on CIFAR-10 from the local JPEG tar (`../shared/data/cifar10_jpg`).

`--config.data.source=tfds --config.data.name=cifar10` uses the tfds catalog instead.
"""
from attn_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model.name = "vit"
  c.model.patch_size = 4
  c.model.hidden = 192
  c.model.depth = 6
  c.model.num_heads = 3
  c.model.mlp_dim = 384
  c.model.dropout = 0.1
  c.model.drop_path_rate = 0.1
  c.data.source = "local"
  c.data.name = "cifar10"
  c.data.path = "../shared/data/cifar10_jpg"
  c.data.mean = (0.4914, 0.4822, 0.4465)
  c.data.std = (0.2470, 0.2435, 0.2616)
  c.data.crop_padding = 4
  c.data.flip = True
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 1000
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 40_000
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.best_metric = "eval_accuracy"
  return c
