"""ViT (patch 4) on MNIST. Offline from the IDX files; `--config.data.source=tfds` reads the
tfds catalog instead (needs the dataset prepared or internet)."""
from attn_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model.name = "vit"
  c.model.patch_size = 4
  c.model.width = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 128
  c.model.dropout_rate = 0.1
  c.data.source = "local"
  c.data.name = "mnist"
  c.data.path = "../shared/data/mnist"
  c.data.mean, c.data.std = (0.1307,), (0.3081,)
  c.data.crop_padding = 2
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 200
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.num_steps = 3000
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.best_metric = "eval_accuracy"
  return c
