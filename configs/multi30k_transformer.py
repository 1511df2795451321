"""Transformer (3+3 layers, d_model 256, 8 heads, FFN 512) on Multi30k German->English.

Reads the raw files in `../shared/data/multi30k`; word-level vocabularies (min frequency 2)
fitted on the training split; `--config.data.tokenizer=sentencepiece` for subwords.
Evaluate BLEU with `python -m experiments.evaluate --config configs/multi30k_transformer.py`.
"""
from attn_jax.train.config import base_config


def get_config():
  c = base_config()
  c.model.name = "transformer"
  c.model.d_model = 256
  c.model.num_heads = 8
  c.model.d_ff = 512
  c.model.num_layers = 3
  c.model.dropout = 0.1
  c.data.source = "multi30k"
  c.data.path = "../shared/data/multi30k"
  c.data.src_lang, c.data.tgt_lang = "de", "en"
  c.data.train_split, c.data.eval_split = "train", "val"
  c.data.tokenizer = "word"
  c.data.min_freq = 2
  c.data.buckets = (16, 24, 32, 48, 64)
  c.optim.name = "adam"
  c.optim.b2 = 0.98
  c.optim.learning_rate = 5e-4
  c.optim.warmup_steps = 1000
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_steps = 4600   # ~20 epochs of 29k pairs
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.best_metric = "eval_loss"
  c.best_mode = "min"
  return c
