"""The offline default: Bahdanau GRU Seq2Seq on generated date normalization.

'21 November 2026' -> '2026-11-21' (and 7 other input formats). No downloads and no
data files; a few minutes on a laptop CPU. The attention heatmap in the workdir
shows each output digit attending to the day, month or year of the input.
"""
from attn_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model.name = "seq2seq"
  c.model.embed_width = 32
  c.model.width = 64
  c.model.cell = "gru"
  c.model.attention = "bahdanau"
  c.data.source = "task"
  c.data.name = "date"
  c.data.num_train = 20_000
  c.data.num_eval = 1_000
  c.data.buckets = (16, 32)
  c.optim.name = "adam"
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.optim.end_lr_factor = 0.05
  c.optim.grad_clip_norm = 1.0
  c.batch_size = 64
  c.eval_batch_size = 500
  c.num_steps = 1000
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 500
  c.best_metric = "eval_exact_match"
  return c
