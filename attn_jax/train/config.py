"""The schema of an experiment config and its validation.

`base_config()` lists every key the runner reads (with defaults); experiment files
in `configs/` start from it and change values. `validate(config)` runs before
anything is built or compiled: an unknown key or an impossible combination raises
`ConfigError` naming the key.
"""
from __future__ import annotations

import ml_collections

from attn_jax.train import models as M


class ConfigError(ValueError):
  """The config has an unknown key or an impossible combination; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  """Every key with its default (the offline default experiment's values where sensible)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict({"name": "mlp"})   # plus constructor kwargs
  d = c.data = ml_collections.ConfigDict()
  d.source = "local"            # tfds | local | multi30k | pairs | tsv | task
  d.name = ""                   # tfds dataset or generated task name
  d.path = ""                   # local folder / tar / multi30k root
  d.data_dir = ""               # tfds data_dir ('' = tfds default)
  d.train_split = "train"
  d.eval_split = "test"
  d.train_files = ""            # 'src,tgt' (pairs) or 'file.tsv' (tsv)
  d.eval_files = ""
  d.src_lang = "de"
  d.tgt_lang = "en"
  d.tokenizer = "word"          # word | sentencepiece
  d.min_freq = 2
  d.vocab_size = 8000
  d.buckets = (16, 32, 64)
  d.num_train = 10_000          # generated tasks
  d.num_eval = 1_000
  d.max_eval_examples = 0       # 0 = the whole eval split
  d.num_classes = 0             # 0 = from the labels
  d.mean = ()                   # () = 0.5 per channel
  d.std = ()
  d.crop_padding = 0
  d.flip = False
  d.rotate = 0.0                # random rotation in [-rotate, rotate] degrees, train AND eval
  d.translate = 0               # random shift in [-translate, translate] pixels, train AND eval
  d.canvas = 0                  # pad images (centred) to canvas x canvas first; 0 = keep
  o = c.optim = ml_collections.ConfigDict()
  o.name = "adamw"              # adamw | adam | sgd
  o.learning_rate = 1e-3
  o.schedule = "cosine"         # cosine | linear | constant (after warmup)
  o.warmup_steps = 0
  o.end_lr_factor = 0.0
  o.weight_decay = 0.0
  o.b1 = 0.9
  o.b2 = 0.999
  o.momentum = 0.9
  o.grad_clip_norm = 0.0        # 0 = off
  o.grad_accum_steps = 1
  c.label_smoothing = 0.0
  c.dtype = "float32"           # compute dtype: float32 | bfloat16 (params stay float32)
  c.batch_size = 64             # global, over all devices and hosts
  c.eval_batch_size = 256
  c.num_steps = 1000
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.best_metric = ""            # e.g. 'eval_accuracy'; '' = no best-checkpoint keeping
  c.best_mode = "max"
  c.async_checkpoint = True
  c.strategy = "jit"            # jit | pmap
  c.heatmap = True
  c.progress = "auto"           # auto | on | off
  a = c.anchor = ml_collections.ConfigDict()   # the published result a results table compares to
  a.metric = ""                 # e.g. 'accuracy' (%), 'bleu_lower', 'error' (%)
  a.value = 0.0
  a.higher_is_better = True
  a.source = ""                 # where the number comes from
  t = c.distributed = ml_collections.ConfigDict()
  t.coordinator_address = ""    # '' = single process unless JAX finds a cluster env
  t.num_processes = 1
  t.process_id = 0
  t.initialize = False          # True: call jax.distributed.initialize() from the env
  return c


_CHOICES = {
    "data.source": ("tfds", "local", "multi30k", "pairs", "tsv", "task"),
    "data.tokenizer": ("word", "sentencepiece"),
    "optim.name": ("adamw", "adam", "sgd"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "dtype": ("float32", "bfloat16"),
    "strategy": ("jit", "pmap"),
    "best_mode": ("max", "min"),
    "progress": ("auto", "on", "off"),
}


def _check_keys(cfg, ref, prefix: str) -> None:
  for key in cfg.keys():
    name = f"{prefix}{key}"
    if prefix == "" and key == "model":
      continue
    if key not in ref:
      raise ConfigError(f"config.{name}: unknown key; known keys here: {sorted(ref.keys())}.")
    if isinstance(ref[key], ml_collections.ConfigDict):
      _check_keys(cfg[key], ref[key], name + ".")


def _get(cfg, dotted: str):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


def validate(config, num_devices: int = 1) -> None:
  """Raises ConfigError naming the key for unknown keys or impossible combinations."""
  _check_keys(config, base_config(), "")
  for key, options in _CHOICES.items():
    if _get(config, key) not in options:
      raise ConfigError(f"config.{key}={_get(config, key)!r}; expected one of {options}.")
  try:
    M.check_model_keys(config.model)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  for key in ("batch_size", "eval_batch_size", "num_steps", "log_every", "eval_every",
              "checkpoint_every", "keep_checkpoints"):
    if config[key] <= 0:
      raise ConfigError(f"config.{key}={config[key]} must be > 0.")
  accum = config.optim.grad_accum_steps
  if accum < 1:
    raise ConfigError(f"config.optim.grad_accum_steps={accum} must be >= 1.")
  if config.batch_size % num_devices:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{num_devices} devices.")
  if config.eval_batch_size % num_devices:
    raise ConfigError(f"config.eval_batch_size={config.eval_batch_size} is not divisible by the "
                      f"{num_devices} devices.")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1).")
  if config.optim.warmup_steps > config.num_steps:
    raise ConfigError(f"config.optim.warmup_steps={config.optim.warmup_steps} exceeds "
                      f"config.num_steps={config.num_steps}.")
  if config.best_metric and not config.best_metric.startswith("eval_"):
    raise ConfigError(f"config.best_metric={config.best_metric!r} must name an eval metric "
                      "('eval_accuracy', 'eval_loss', ...).")
  _check_model_shapes(config)


def _check_model_shapes(config) -> None:
  """Head/width and image/patch divisibility, for whichever of these keys the model has."""
  m = config.model
  width_keys = [k for k in ("hidden", "embed_dim", "d_model", "emb_dim", "features") if k in m]
  if "num_heads" in m and width_keys:
    heads = m.num_heads
    for wk in width_keys:
      for h in (heads if isinstance(heads, (tuple, list)) else (heads,)):
        width = m[wk]
        if isinstance(width, int) and width % h:
          raise ConfigError(f"config.model.num_heads={heads} does not divide "
                            f"config.model.{wk}={width}.")
  size = _known_image_size(config)
  if size and "patch_size" in m and size % m.patch_size:
    raise ConfigError(f"config.model.patch_size={m.patch_size} does not divide the image size "
                      f"{size} of dataset '{config.data.name or config.data.path}'.")


# Image sizes of tfds datasets, known before loading; local data is checked once read.
_IMAGE_SIZES = {"mnist": 28, "fashion_mnist": 28, "kmnist": 28, "emnist": 28, "cifar10": 32,
                "cifar100": 32, "svhn_cropped": 32}


def _known_image_size(config) -> int | None:
  d = config.data
  return _IMAGE_SIZES.get(d.name) if d.source == "tfds" else None
