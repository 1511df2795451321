"""Channel and spatial attention for CNNs: SE, ECA and CBAM.

Each module maps `x: [batch, height, width, channels]` to the same shape, rescaling
it by gates in (0, 1) that it sows in 'intermediates' (apply with
`mutable=['intermediates']` to read them).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
  """ECA-Net's adaptive kernel size: |log2(C)/gamma + b/gamma| rounded to the nearest odd above.

  E.g. 64 -> 3, 128 -> 5, 256 -> 5, 512 -> 5, 1024 -> 5 (gamma=2, b=1).

  Args:
    channels: number of channels C.
    gamma: the paper's gamma.
    b: the paper's b.

  Returns:
    An odd kernel size (1 for C <= 4).
  """
  t = int(abs((math.log2(channels) + b) / gamma))
  return t if t % 2 else t + 1


def _kw(module: nn.Module) -> dict:
  return dict(dtype=module.dtype, param_dtype=module.param_dtype)


def _check(fn: str, x) -> None:
  C.check_rank(fn, "x", x, "[batch, height, width, channels]", rank=4)


class SqueezeExcitation(nn.Module):
  """Squeeze-and-Excitation (Hu et al. 2018): global average pool -> MLP (C -> C/r -> C) -> sigmoid.

  x: [batch, height, width, C] -> same; the gate [batch, 1, 1, C] is sown as 'gate'.
  """
  reduction: int = 16
  min_hidden: int = 4
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, C] -> the same shape, rescaled per channel by the gate
    [batch, 1, 1, C] (sown as 'gate')."""
    _check("SqueezeExcitation", x)
    c = x.shape[-1]
    s = x.mean(axis=(1, 2), keepdims=True)                     # squeeze: [b, 1, 1, C]
    s = nn.relu(nn.Dense(max(c // self.reduction, self.min_hidden), name="reduce",
                         **_kw(self))(s))
    gate = nn.sigmoid(nn.Dense(c, name="expand", **_kw(self))(s))
    self.sow("intermediates", "gate", gate)
    return x * gate


class ECA(nn.Module):
  """Efficient Channel Attention (Wang et al. 2020): 1-D conv across pooled channels -> sigmoid.

  x: [batch, height, width, C] -> same; kernel size `eca_kernel_size(C)` unless given;
  the gate [batch, 1, 1, C] is sown as 'gate'.
  """
  kernel_size: int | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, C] -> the same shape, rescaled per channel by the gate
    [batch, 1, 1, C] (sown as 'gate')."""
    _check("ECA", x)
    c = x.shape[-1]
    k = self.kernel_size or eca_kernel_size(c)
    s = x.mean(axis=(1, 2))[:, :, None]                        # [b, C, 1]: channels as a sequence
    s = nn.Conv(1, (k,), padding="SAME", use_bias=False, name="conv", **_kw(self))(s)
    gate = nn.sigmoid(s[:, :, 0])[:, None, None, :]
    self.sow("intermediates", "gate", gate)
    return x * gate


class CBAM(nn.Module):
  """Convolutional Block Attention Module (Woo et al. 2018): channel gate, then spatial gate.

  Channel: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) with one shared MLP (C -> C/r -> C).
  Spatial: sigmoid(conv7x7([mean_c(x), max_c(x)])).
  x: [batch, height, width, C] -> same; sows 'channel_gate' [batch, 1, 1, C] and
  'spatial_gate' [batch, height, width, 1].
  """
  reduction: int = 16
  min_hidden: int = 4
  spatial_kernel: int = 7
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [batch, height, width, C] -> the same shape; gates sown as 'channel_gate'
    [batch, 1, 1, C] and 'spatial_gate' [batch, height, width, 1]."""
    _check("CBAM", x)
    c = x.shape[-1]
    mlp = nn.Sequential([nn.Dense(max(c // self.reduction, self.min_hidden), **_kw(self)),
                         nn.relu, nn.Dense(c, **_kw(self))], name="mlp")
    avg = x.mean(axis=(1, 2), keepdims=True)
    mx = x.max(axis=(1, 2), keepdims=True)
    cg = nn.sigmoid(mlp(avg) + mlp(mx))
    self.sow("intermediates", "channel_gate", cg)
    x = x * cg
    maps = jnp.concatenate([x.mean(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)], -1)
    k = self.spatial_kernel
    sg = nn.sigmoid(nn.Conv(1, (k, k), padding="SAME", name="spatial", **_kw(self))(maps))
    self.sow("intermediates", "spatial_gate", sg)
    return x * sg


ATTENTION_KINDS = ("none", "se", "eca", "cbam")


def channel_attention(kind: str, reduction: int = 16, dtype: Any = None,
                      param_dtype: Any = jnp.float32) -> nn.Module | None:
  """Builds the attention module for a config value.

  Args:
    kind: 'none', 'se', 'eca' or 'cbam'.
    reduction: channel reduction of SE / CBAM's MLP.
    dtype: compute dtype.
    param_dtype: parameter dtype.

  Returns:
    The module ([batch, height, width, C] -> same shape), or None for 'none'.
  """
  if kind == "none":
    return None
  if kind == "se":
    return SqueezeExcitation(reduction, dtype=dtype, param_dtype=param_dtype)
  if kind == "eca":
    return ECA(dtype=dtype, param_dtype=param_dtype)
  if kind == "cbam":
    return CBAM(reduction, dtype=dtype, param_dtype=param_dtype)
  raise ValueError(f"channel_attention(): kind must be one of {ATTENTION_KINDS}, got {kind!r}.")
