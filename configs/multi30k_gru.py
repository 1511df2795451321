"""Bidirectional GRU encoder + GRU decoder with Bahdanau attention on Multi30k, 10 epochs.

    python -m experiments.train --config configs/multi30k_gru.py:de_en --workdir runs/m30k_gru_de_en

The config argument is the direction, `de_en` (default) or `en_de`; data and schedule as in
configs/multi30k_transformer.py.
"""
from configs import multi30k_transformer


def get_config(arg: str | None = None):
  c = multi30k_transformer.get_config(arg)
  c.model = type(c.model)({"name": "seq2seq", "embed_width": 256, "width": 256, "cell": "gru",
                           "attention": "bahdanau", "bidirectional": True,
                           "dropout_rate": 0.3})
  c.optim.learning_rate = 1e-3
  c.optim.b2 = 0.999
  c.optim.warmup_steps = 100
  c.label_smoothing = 0.0
  lang = f"{c.data.src_lang}_{c.data.tgt_lang}"
  c.anchor.value = 28.3 if lang == "de_en" else 0.0
  c.anchor.source = ("GRU + Bahdanau attention, 10 epochs, test_2016_flickr (shared/data README)"
                     if lang == "de_en" else "no published anchor for this direction")
  return c
