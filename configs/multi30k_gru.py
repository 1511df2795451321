"""GRU encoder-decoder with Bahdanau attention on Multi30k German->English."""
from configs import multi30k_transformer


def get_config():
  c = multi30k_transformer.get_config()
  c.model = type(c.model)({"name": "seq2seq", "embed_dim": 256, "hidden": 512, "cell": "gru",
                           "attention": "bahdanau", "bidirectional": True, "dropout": 0.3})
  c.optim.learning_rate = 1e-3
  c.optim.b2 = 0.999
  c.label_smoothing = 0.0
  return c
