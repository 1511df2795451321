"""Transformer (3+3 layers, width 256, 8 heads, FFN 512) on Multi30k, 10 epochs.

    python -m experiments.train --config configs/multi30k_transformer.py:de_en \
        --workdir runs/m30k_tr_de_en
    python -m experiments.evaluate --config configs/multi30k_transformer.py:de_en \
        --workdir runs/m30k_tr_de_en --config.data.eval_split=test_2016_flickr

The config argument is the direction, `de_en` (default) or `en_de`. Reads the raw files in
`../shared/data/multi30k` (train / val / test_2016_flickr); lower-cased word vocabularies
(min frequency 2) fitted on the training split; `--config.data.tokenizer=sentencepiece` for
cased subwords.
"""
from attn_jax.train.config import base_config
from configs.common import direction

_ANCHORS = {"de_en": 36.5}   # published 10-epoch result (lower-cased word-level BLEU)


def get_config(arg: str | None = None):
  c = base_config()
  c.model.name = "transformer"
  c.model.width = 256
  c.model.num_heads = 8
  c.model.mlp_dim = 512
  c.model.depth = 3
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.0   # 0 keeps every attention call on the fast kernels
  c.data.source = "multi30k"
  c.data.path = "../shared/data/multi30k"
  direction(c, arg)
  c.data.train_split, c.data.eval_split = "train", "val"
  c.data.tokenizer = "word"
  c.data.min_freq = 2
  c.data.buckets = (32, 48, 64)   # few shapes: each (src, tgt) bucket pair compiles once
  c.optim.name = "adam"
  c.optim.b2 = 0.98
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 400
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_steps = 2270   # 10 epochs of 29,000 pairs
  c.eval_every = 500
  c.checkpoint_every = 250
  c.best_metric = "eval_loss"
  c.best_mode = "min"
  lang = f"{c.data.src_lang}_{c.data.tgt_lang}"
  c.anchor.metric = "bleu_lower"
  c.anchor.value = _ANCHORS.get(lang, 0.0)
  c.anchor.source = ("Transformer 3+3, 256 hidden, 8 heads, FFN 512, 10 epochs, "
                     "test_2016_flickr (shared/data README)" if lang in _ANCHORS
                     else "no published anchor for this direction")
  return c
