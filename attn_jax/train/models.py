"""Model registry: `config.model.name` -> a lazily imported Flax constructor.

Each entry names the constructor (`"module:attr"`), its family ('classification'
or 'seq2seq') and which fields the runner fills in from the data (number of
classes, vocabulary sizes). Every other `config.model.<key>` is passed to the
constructor as a keyword; `check_model_keys` rejects keys the constructor lacks.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  target: str                     # "package.module:Constructor"
  family: str                     # 'classification' | 'seq2seq'
  data_fields: dict[str, str]     # constructor kwarg -> key of Data.info

  def constructor(self) -> Callable[..., nn.Module]:
    module, attr = self.target.split(":")
    return getattr(importlib.import_module(module), attr)


_CLS = {"num_classes": "num_classes"}
_SEQ = {"src_vocab": "src_vocab", "tgt_vocab": "tgt_vocab"}
REGISTRY: dict[str, ModelSpec] = {
    "mlp": ModelSpec("attn_jax.train.models:MLPClassifier", "classification", _CLS),
    "vit": ModelSpec("attn_jax.vision.vit:ViT", "classification", _CLS),
    "swin": ModelSpec("attn_jax.vision.swin:SwinTransformer", "classification", _CLS),
    "resnet": ModelSpec("attn_jax.vision.resnet:ResNet", "classification", _CLS),
    "cnn": ModelSpec("attn_jax.vision.cnn:ConvNet", "classification", _CLS),
    "stn_cnn": ModelSpec("attn_jax.vision.stn:stn_cnn", "classification", _CLS),
    "seq2seq": ModelSpec("attn_jax.seq.seq2seq:Seq2Seq", "seq2seq", _SEQ),
    "transformer": ModelSpec("attn_jax.seq.transformer:Transformer", "seq2seq", _SEQ),
}


def register(name: str, spec: ModelSpec) -> None:
  """Adds a model (e.g. from a user's package) to the registry."""
  REGISTRY[name] = spec


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
    raise ValueError(f"config.model.name='{model_cfg.name}': {spec.target} is not available ({e}).") from e
  fields = constructor_fields(ctor)
  for key in model_cfg.keys():
    if key == "name":
      continue
    if key in spec.data_fields:
      raise ValueError(f"config.model.{key} is set from the data; remove it from the config.")
    if key not in fields:
      raise ValueError(f"config.model.{key}: unknown key for {spec.target}; it takes {sorted(fields)}.")


def build_model(model_cfg, info: dict[str, Any], dtype: Any = jnp.float32) -> tuple[nn.Module, str]:
  """Instantiates `config.model` with the data-dependent fields filled in -> (module, family)."""
  spec = spec_of(model_cfg.name)
  ctor = spec.constructor()
  kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_cfg.items() if k != "name"}
  kwargs.update({arg: info[key] for arg, key in spec.data_fields.items()})
  if "dtype" in constructor_fields(ctor) and dtype != jnp.float32:
    kwargs["dtype"] = dtype   # compute dtype; params stay float32 (param_dtype)
  return ctor(**kwargs), spec.family


class MLPClassifier(nn.Module):
  """A small MLP baseline: images [b, h, w, c] -> logits [b, num_classes].

  Attributes: num_classes; hidden (widths of the hidden layers); dropout; dtype
  (compute dtype, params float32).
  """
  num_classes: int
  hidden: tuple[int, ...] = (128,)
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.reshape(images.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
