"""The schema of an experiment config and its validation.

`base_config()` lists every key the runner reads (with defaults); experiment files
in `configs/` start from it and change values. `validate(config)` runs before
anything is built or compiled: an unknown key or an impossible combination raises
`ConfigError` naming the key.
"""
from __future__ import annotations

import difflib
import math

import ml_collections

from attn_jax.data.autoaugment import policy_transform

from attn_jax.train import models as M


class ConfigError(ValueError):
  """The config has an unknown key or an impossible combination; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  """Every key with its default (the offline default experiment's values where sensible).

  The comment after each key is its meaning (`key_meanings`, `--help`).

  Returns:
    A fresh ConfigDict with the sections `model`, `data`, `optim`, `anchor`,
    `distributed` and `mesh` and the top-level keys; `model` holds only `name`
    (its constructor arguments are free-form).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0                    # PRNG seed of init, dropout and data order
  c.model = ml_collections.ConfigDict({"name": "mlp"})   # plus constructor kwargs
  d = c.data = ml_collections.ConfigDict()
  d.source = "local"            # tfds | local | multi30k | pairs | tsv | task | text
  d.name = ""                   # tfds dataset or generated task name
  d.path = ""                   # local folder / tar / multi30k root
  d.data_dir = ""               # tfds data_dir ('' = tfds default)
  d.train_split = "train"       # split (tfds / local / multi30k) to train on
  d.eval_split = "test"         # split to evaluate on
  d.train_files = ""            # 'src,tgt' (pairs), 'file.tsv' (tsv), 'file.txt[.gz]' (text)
  d.eval_files = ""             # like train_files, for the eval split
  d.src_column = 0              # tsv: column of the source sentence (0-based)
  d.tgt_column = 1              # tsv: column of the target sentence
  d.src_lang = "de"             # multi30k: source language
  d.tgt_lang = "en"             # multi30k: target language
  d.tokenizer = "word"          # word | sentencepiece | char
  d.min_freq = 2                # word tokenizer: rarer words become <unk>
  d.vocab_size = 8000           # sentencepiece: vocabulary size
  d.buckets = (16, 32, 64)      # lengths text batches are padded to
  d.seq_len = 128               # text (language model): tokens per row
  d.pack = False                # pack sentences end to end in rows (segment ids): text, and
                                # seq2seq training batches (Transformer; rows of max(buckets))
  d.num_train = 10_000          # generated tasks
  d.num_eval = 1_000            # generated tasks: eval examples
  d.max_eval_examples = 0       # 0 = the whole eval split
  d.num_classes = 0             # 0 = from the labels
  d.mean = ()                   # () = 0.5 per channel
  d.std = ()                    # image normalization std per channel; () = 0.5
  d.crop_padding = 0            # random crops after padding this many pixels
  d.flip = False                # random horizontal flips (train)
  d.augment_policy = ""         # '' | 'autoaugment' (CIFAR-10 policy) | 'randaugment-n2-m9' (train)
  d.rotate = 0.0                # random rotation in [-rotate, rotate] degrees, train AND eval
  d.translate = 0               # random shift in [-translate, translate] pixels, train AND eval
  d.canvas = 0                  # pad images (centred) to canvas x canvas first; 0 = keep
  d.batch_augment = False       # crop + flip drawn per batch, vectorized (~2x faster input;
                                # another random stream than the per-example default)
  d.decode_limit_mb = 2048      # local JPEG/PNG images are decoded once at load when the
                                # uint8 array fits in this many MiB; else on every access
  d.prefetch = 2                # batches prepared ahead (threads) and put on the devices; 0 = off
  o = c.optim = ml_collections.ConfigDict()
  o.name = "adamw"              # adamw | adam | sgd
  o.learning_rate = 1e-3        # peak learning rate (> 0)
  o.schedule = "cosine"         # cosine | linear | constant (after warmup)
  o.warmup_steps = 0            # linear warmup from 0 over this many updates
  o.end_lr_factor = 0.0         # final learning rate / peak, in [0, 1]
  o.weight_decay = 0.0          # decoupled weight decay (not biases, norms)
  o.b1 = 0.9                    # Adam beta1, in [0, 1)
  o.b2 = 0.999                  # Adam beta2, in [0, 1)
  o.momentum = 0.9              # sgd momentum (0 = none)
  o.grad_clip_norm = 0.0        # 0 = off
  o.skip_nonfinite = 0          # 0: NaN/Inf loss/grads stop the run; n: skip, stop after n in a row
  o.grad_accum_steps = 1        # micro-batches per optimizer update
  c.label_smoothing = 0.0       # cross-entropy label smoothing, in [0, 1)
  c.dtype = "float32"           # compute dtype: float32 | bfloat16 (params stay float32)
  c.batch_size = 64             # global, over all devices and hosts
  c.eval_batch_size = 256       # global eval batch size
  c.num_steps = 1000            # training steps (micro-batches)
  c.log_every = 50              # steps between train metric lines
  c.eval_every = 500            # steps between evals
  c.checkpoint_every = 500      # steps between checkpoints
  c.keep_checkpoints = 2        # newest checkpoints kept
  c.best_metric = ""            # e.g. 'eval_accuracy'; '' = no best-checkpoint keeping
  c.best_mode = "max"           # max | min: direction of best_metric
  c.async_checkpoint = True     # write checkpoints in the background
  c.strategy = "jit"            # jit | pmap
  c.heatmap = True              # seq2seq: save attention.png at the end
  c.progress = "auto"           # auto | on | off
  c.progress_every_s = 60.0     # auto without a TTY: a progress line (at a log step) this often
  c.init_from = ""              # fresh runs (not resumes): params from this checkpoint (attn_jax.pretrained)
  c.init_from_format = "auto"   # auto | timm | big_vision: init_from's key layout
  c.init_from_head = True       # False: a fresh classifier head even when its shape fits
  c.freeze = ""                 # regex of param paths ('embedding/', 'block[0-5]/') not trained
  a = c.anchor = ml_collections.ConfigDict()   # the published result a results table compares to
  a.metric = ""                 # e.g. 'accuracy' (%), 'bleu_lower', 'error' (%)
  a.value = 0.0                 # the published value
  a.higher_is_better = True     # direction of anchor.metric
  a.source = ""                 # where the number comes from
  t = c.distributed = ml_collections.ConfigDict()
  t.coordinator_address = ""    # '' = single process unless JAX finds a cluster env
  t.num_processes = 1           # processes of a multi-host run
  t.process_id = 0              # this process's index
  t.initialize = False          # True: call jax.distributed.initialize() from the env
  m = c.mesh = ml_collections.ConfigDict()   # strategy=jit's device mesh (train.sharding)
  m.data = -1                   # devices splitting the batch (state replicated); -1 = the rest
  m.fsdp = 1                    # devices splitting the batch and large params + optimizer state
  m.model = 1                   # tensor parallel: devices splitting attention heads, MLP hidden
  m.seq = 1                     # sequence parallel: devices splitting [batch, len] inputs (ring attention)
  m.fsdp_min_size = 16384       # fsdp shards only parameters of at least this many elements
  return c


_PREFIX = {"c": "", "d": "data.", "o": "optim.", "a": "anchor.", "t": "distributed.",
           "m": "mesh."}


def key_meanings() -> dict[str, str]:
  """The one-line meaning of every key, read from the comments in `base_config`'s source.

  Returns:
    {dotted key (e.g. 'optim.learning_rate'): meaning}; keys without a comment are left out.
  """
  import inspect
  import re
  out = {}
  for line in inspect.getsource(base_config).splitlines():
    m = re.match(r"\s*([cdoatm])\.(\w+) = .*?#\s*(.*)$", line)
    if m:
      out[_PREFIX[m.group(1)] + m.group(2)] = m.group(3).strip()
  return out


def keys_help(config) -> str:
  """Every key of `config` with its value and meaning, one per line (for `--help`).

  Args:
    config: a ConfigDict (e.g. `base_config()` with an experiment's changes).

  Returns:
    Lines `  --config.<key>=<value!r>    <meaning>`, joined by newlines; `model.*` keys
    without a meaning are noted as model constructor arguments.
  """
  meaning = key_meanings()
  lines = []
  for key, value in _walk(config):
    note = meaning.get(key, "model constructor argument" if key.startswith("model.") else "")
    lines.append(f"  --config.{key}={value!r}" + (f"    {note}" if note else ""))
  return "\n".join(lines)


_CHOICES = {
    "data.source": ("tfds", "local", "multi30k", "pairs", "tsv", "task", "text"),
    "data.tokenizer": ("word", "sentencepiece", "char"),
    "optim.name": ("adamw", "adam", "sgd"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "dtype": ("float32", "bfloat16"),
    "strategy": ("jit", "pmap"),
    "best_mode": ("max", "min"),
    "progress": ("auto", "on", "off"),
    "init_from_format": ("auto", "timm", "big_vision"),
}


def did_you_mean(key: str, known) -> str:
  """A hint naming the closest known key, for error messages.

  Args:
    key: the unknown key.
    known: the candidate keys (any iterable of str).

  Returns:
    " (did you mean 'x'?)" for the closest of `known` (difflib, cutoff 0.6), or ''.
  """
  close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
  return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(cfg, ref, prefix: str) -> None:
  for key in cfg.keys():
    name = f"{prefix}{key}"
    if prefix == "" and key == "model":
      continue
    if key not in ref:
      raise ConfigError(f"config.{name}: unknown key{did_you_mean(key, ref.keys())}; known keys "
                        f"here: {sorted(ref.keys())}.")
    if isinstance(ref[key], ml_collections.ConfigDict):
      _check_keys(cfg[key], ref[key], name + ".")


def _get(cfg, dotted: str):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


def validate(config, num_devices: int | None = None) -> None:
  """Checks `config` before anything is built or compiled.

  Checks unknown keys (`model`'s against the model's constructor,
  `models.check_model_keys`), the choices of enumerated keys, positive counts and
  in-range, finite numbers, the mesh, batch divisibility, packing, `best_metric`, model
  shapes, `freeze` and `init_from`.

  Args:
    config: the run config (`base_config()` with changes).
    num_devices: the global device count; None skips the checks that depend on it (the
      mesh fits the devices; the batch sizes divide over the batch shards).

  Returns:
    None.

  Raises:
    ConfigError: the first problem found; the message names the key.
  """
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
  shards, where = _batch_shards(config, num_devices)
  if shards and config.batch_size % shards:
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{shards} {where}.")
  if shards and config.eval_batch_size % shards:
    raise ConfigError(f"config.eval_batch_size={config.eval_batch_size} is not divisible by the "
                      f"{shards} {where}.")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1).")
  if config.optim.warmup_steps > config.num_steps:
    raise ConfigError(f"config.optim.warmup_steps={config.optim.warmup_steps} exceeds "
                      f"config.num_steps={config.num_steps}.")
  _check_numbers(config)
  try:
    policy_transform(config.data.augment_policy)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.data.get("batch_augment") and (config.data.augment_policy or config.data.rotate
                                           or config.data.translate or config.data.canvas):
    raise ConfigError("config.data.batch_augment=True draws crop + flip only; "
                      f"config.data.augment_policy={config.data.augment_policy!r}, rotate, "
                      "translate and canvas need the per-example path (batch_augment=False).")
  if config.data.pack and config.data.source in ("multi30k", "pairs", "tsv", "task") \
      and config.model.name != "transformer":
    raise ConfigError(f"config.data.pack=True packs sequence pairs for model 'transformer' "
                      f"only; config.model.name={config.model.name!r} needs padded batches.")
  if config.best_metric and not config.best_metric.startswith("eval_"):
    raise ConfigError(f"config.best_metric={config.best_metric!r} must name an eval metric "
                      "('eval_accuracy', 'eval_loss', ...).")
  _check_model_shapes(config)
  _check_init_from(config)


def _check_init_from(config) -> None:
  """`freeze` is a regex; `init_from` needs a model that `attn_jax.pretrained` loads."""
  import re
  try:
    re.compile(config.freeze)
  except re.error as e:
    raise ConfigError(f"config.freeze={config.freeze!r} is not a regular expression: {e}.") from e
  if config.init_from and config.model.name not in ("vit", "swin"):
    raise ConfigError(f"config.init_from: checkpoints load into 'vit' and 'swin' models, not "
                      f"config.model.name='{config.model.name}'.")


def _batch_shards(config, num_devices: int | None) -> tuple[int, str]:
  """(pieces the batch is split into, what they are) for `config.mesh` (0 when the number
  of devices is not known yet); ConfigError if the mesh does not fit the devices."""
  from attn_jax.train import sharding
  try:
    spec = sharding.MeshSpec.parse(config.get("mesh"))
    sizes = spec.sizes(num_devices or math.prod((spec.fsdp, spec.seq, spec.model,
                                                 max(spec.data, 1))))
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.mesh: {e}") from None
  if spec.is_default:
    return num_devices or 0, "devices"
  if config.strategy == "pmap":
    raise ConfigError("config.mesh needs config.strategy='jit' (pmap only replicates).")
  n = sizes["data"] * sizes["fsdp"] if num_devices else 0
  return n, f"devices of mesh axes data x fsdp ({sizes['data']} x {sizes['fsdp']})"


# (key, low, high, low inclusive, high inclusive); None = unbounded.
_RANGES = (
    ("optim.learning_rate", 0.0, None, False, False),
    ("optim.end_lr_factor", 0.0, 1.0, True, True),
    ("optim.weight_decay", 0.0, None, True, False),
    ("optim.b1", 0.0, 1.0, True, False),
    ("optim.b2", 0.0, 1.0, True, False),
    ("optim.momentum", 0.0, 1.0, True, False),
    ("optim.grad_clip_norm", 0.0, None, True, False),
    ("optim.warmup_steps", 0, None, True, False),
    ("data.min_freq", 1, None, True, False),
    ("data.seq_len", 2, None, True, False),
    ("data.vocab_size", 1, None, True, False),
    ("data.num_train", 1, None, True, False),
    ("data.num_eval", 1, None, True, False),
    ("data.max_eval_examples", 0, None, True, False),
    ("data.src_column", 0, None, True, False),
    ("data.tgt_column", 0, None, True, False),
    ("data.crop_padding", 0, None, True, False),
    ("data.rotate", 0.0, 180.0, True, True),
    ("data.translate", 0, None, True, False),
    ("data.canvas", 0, None, True, False),
    ("data.decode_limit_mb", 0.0, None, True, False),
    ("optim.skip_nonfinite", 0, None, True, False),
    ("progress_every_s", 0.0, None, True, False),
)


def _walk(cfg, prefix: str = ""):
  for key in cfg.keys():
    value = cfg[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _walk(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _check_numbers(config) -> None:
  """No NaN/Inf anywhere; learning rate > 0; rates, betas and sizes in their ranges."""
  for key, value in _walk(config):
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"config.{key}={v!r} must be a finite number.")
  for key, lo, hi, lo_in, hi_in in _RANGES:
    v = _get(config, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise ConfigError(f"config.{key}={v!r} must be a number.")
    bad_lo = lo is not None and (v < lo if lo_in else v <= lo)
    bad_hi = hi is not None and (v > hi if hi_in else v >= hi)
    if bad_lo or bad_hi:
      need = " and ".join(x for x in (
          lo is not None and f"{'>=' if lo_in else '>'} {lo}",
          hi is not None and f"{'<=' if hi_in else '<'} {hi}") if x)
      raise ConfigError(f"config.{key}={v!r} must be {need}.")
  d = config.data
  if d.source == "tsv" and d.src_column == d.tgt_column:
    raise ConfigError(f"config.data.src_column and config.data.tgt_column are both "
                      f"{d.src_column}; they must name two different columns.")


def _check_model_shapes(config) -> None:
  """Head/width and image/patch divisibility, for whichever of these keys the model has."""
  m = config.model
  if "num_heads" in m and isinstance(m.get("width"), int):
    heads = m.num_heads
    for h in (heads if isinstance(heads, (tuple, list)) else (heads,)):
      if m.width % h:
        raise ConfigError(f"config.model.num_heads={heads} does not divide "
                          f"config.model.width={m.width}.")
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
