"""Model registry: `config.model.name` -> a lazily imported Flax constructor and its task.

Each entry names the constructor (`"module:attr"`), its task (`attn_jax.train.tasks`) and
which fields the runner fills in from the data (number of classes, vocabulary sizes).
Every other `config.model.<key>` is passed to the constructor as a keyword;
`check_model_keys` rejects keys the constructor lacks. Every model takes the same names
for the same things (`width`, `depth`, `num_heads`, `mlp_dim`, `dropout_rate`, `dtype`, ...).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.train.tasks import CLASSIFICATION, LANGUAGE_MODEL, SEQ2SEQ, Task


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  target: str                     # "package.module:Constructor"
  task: Task
  data_fields: dict[str, str]     # constructor kwarg -> key of Data.info

  def constructor(self) -> Callable[..., nn.Module]:
    module, attr = self.target.split(":")
    return getattr(importlib.import_module(module), attr)


_CLS = {"num_classes": "num_classes"}
_SEQ = {"src_vocab": "src_vocab", "tgt_vocab": "tgt_vocab"}
REGISTRY: dict[str, ModelSpec] = {
    "mlp": ModelSpec("attn_jax.train.models:MLPClassifier", CLASSIFICATION, _CLS),
    "vit": ModelSpec("attn_jax.vision.vit:ViT", CLASSIFICATION, _CLS),
    "swin": ModelSpec("attn_jax.vision.swin:SwinTransformer", CLASSIFICATION, _CLS),
    "resnet": ModelSpec("attn_jax.vision.resnet:ResNet", CLASSIFICATION, _CLS),
    "cnn": ModelSpec("attn_jax.vision.cnn:ConvNet", CLASSIFICATION, _CLS),
    "stn_cnn": ModelSpec("attn_jax.vision.stn:stn_cnn", CLASSIFICATION, _CLS),
    "seq2seq": ModelSpec("attn_jax.seq.seq2seq:Seq2Seq", SEQ2SEQ, _SEQ),
    "transformer": ModelSpec("attn_jax.seq.transformer:Transformer", SEQ2SEQ, _SEQ),
    "lm": ModelSpec("attn_jax.seq.lm:TransformerLM", LANGUAGE_MODEL,
                    {"vocab_size": "vocab_size"}),
}


def spec_of(name: str) -> ModelSpec:
  if name not in REGISTRY:
    raise ValueError(f"config.model.name: unknown model '{name}'; known: {sorted(REGISTRY)}.")
  return REGISTRY[name]


def constructor_fields(ctor: Callable[..., Any]) -> set[str]:
  """Keyword names a constructor accepts (Flax modules are dataclasses)."""
  if dataclasses.is_dataclass(ctor):
    return {f.name for f in dataclasses.fields(ctor) if f.init} - {"parent", "name"}
  return set(inspect.signature(ctor).parameters)


def check_model_keys(model_cfg) -> None:
  """Raises ValueError naming `model.<key>` for a key the constructor does not take."""
  spec = spec_of(model_cfg.name)
  try:
    ctor = spec.constructor()
  except (ImportError, AttributeError) as e:
    raise ValueError(f"config.model.name='{model_cfg.name}': {spec.target} is not available "
                     f"({e}).") from e
  fields = constructor_fields(ctor)
  for key in model_cfg.keys():
    if key == "name":
      continue
    if key in spec.data_fields:
      raise ValueError(f"config.model.{key} is set from the data; remove it from the config.")
    if key in ("dtype", "param_dtype"):
      raise ValueError(f"config.model.{key}: set the compute dtype with config.dtype "
                       "(parameters stay float32).")
    if key not in fields:
      raise ValueError(f"config.model.{key}: unknown key for {spec.target}; it takes "
                       f"{sorted(fields)}.")


def build_model(model_cfg, info: dict[str, Any],
                dtype: Any = jnp.float32) -> tuple[nn.Module, Task]:
  """Instantiates `config.model` with the data-dependent fields filled in -> (module, task).

  `dtype` is the compute dtype; a model that cannot compute in it is an error naming
  `config.dtype`, never a silent float32 run.
  """
  spec = spec_of(model_cfg.name)
  ctor = spec.constructor()
  kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_cfg.items()
            if k != "name"}
  kwargs.update({arg: info[key] for arg, key in spec.data_fields.items()})
  if jnp.dtype(dtype) != jnp.float32:
    if "dtype" not in constructor_fields(ctor):
      raise ValueError(f"config.dtype={jnp.dtype(dtype).name!r}: model '{model_cfg.name}' "
                       f"({spec.target}) has no compute dtype; use config.dtype='float32'.")
    kwargs["dtype"] = dtype   # compute dtype; params stay float32 (param_dtype)
  return ctor(**kwargs), spec.task


class MLPClassifier(nn.Module):
  """A small MLP baseline: images [b, h, w, c] -> logits [b, num_classes] (float32).

  Attributes: num_classes; widths (of the hidden layers); dropout_rate; dtype (compute
  dtype); param_dtype.
  """
  num_classes: int
  widths: tuple[int, ...] = (128,)
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.reshape(images.shape[0], -1)
    for width in self.widths:
      x = nn.relu(nn.Dense(width, **kw)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, **kw)(x).astype(jnp.float32)
