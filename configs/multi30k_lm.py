r"""A character-level decoder-only Transformer LM on the English side of Multi30k.

    python -m experiments.train --config configs/multi30k_lm.py --workdir runs/m30k_lm
    python -m experiments.sample --workdir runs/m30k_lm --num=5 --temperature=0.8 --top_p=0.95

Sentences are packed end to end into rows of `data.seq_len` characters (segment ids keep
them apart: attention and positions restart per sentence, no loss across a boundary);
`--config.data.pack=False` pads one sentence per row instead. Validation perplexity is per
character on `val.en`. Any text file with one sentence per line works:
`--config.data.train_files=my.txt --config.data.eval_files=my_val.txt`;
`--config.data.tokenizer=sentencepiece` trains on subwords.

`:long` is the long-context variant: rows of 32,768 characters (whole stretches of the
corpus, sentences packed end to end) split along the sequence over 8 devices
(`mesh.seq=8`), where every attention layer runs ring attention; a small model, a few
steps, to show that the step runs and learns at that length:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.train \
        --config configs/multi30k_lm.py:long --workdir runs/m30k_lm_32k
"""
from attn_jax.train.config import base_config


def get_config(arg: str | None = None):
  if arg not in (None, "", "long"):
    raise ValueError(f"config argument must be 'long' or nothing, got '{arg}'.")
  c = base_config()
  c.model.name = "lm"
  c.model.width = 256
  c.model.depth = 4
  c.model.num_heads = 8
  c.model.mlp_dim = 1024
  c.model.position = "rope"
  c.model.max_len = 256
  c.model.dropout_rate = 0.1
  c.data.source = "text"
  c.data.train_files = "../shared/data/multi30k/train.en.gz"
  c.data.eval_files = "../shared/data/multi30k/val.en.gz"
  c.data.tokenizer = "char"
  c.data.min_freq = 1
  c.data.seq_len = 256
  c.data.pack = True
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.1
  c.optim.warmup_steps = 100
  c.optim.grad_clip_norm = 1.0
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_steps = 1200
  c.eval_every = 300
  c.checkpoint_every = 300
  c.best_metric = "eval_loss"
  c.best_mode = "min"
  if arg == "long":
    long_context(c)
  return c


def long_context(c, seq_len: int = 32768, devices: int = 8):
  """Rows of `seq_len` characters over a 'seq' mesh axis of `devices` (ring attention)."""
  c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 128, 2, 4, 512
  c.model.max_len = c.data.seq_len = seq_len
  c.model.dropout_rate = 0.0
  c.heatmap = False
  c.mesh.seq = devices
  c.batch_size = c.eval_batch_size = 1
  c.optim.warmup_steps = 2
  c.num_steps = 6
  c.log_every = 1
  c.eval_every = c.checkpoint_every = 6
