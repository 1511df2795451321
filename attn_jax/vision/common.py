"""Pieces shared by the vision transformers: the MLP block and stochastic depth."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_path(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Stochastic depth: zero a whole residual branch per example with probability `rate`.

  x: [batch, ...] branch output; survivors are rescaled by 1/(1-rate). `rate == 0`
  returns x unchanged.
  """
  if rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


class DropPath(nn.Module):
  """Stochastic depth on a residual branch; uses the 'dropout' RNG when not deterministic."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    return drop_path(x, self.rate, self.make_rng("dropout"))


class MlpBlock(nn.Module):
  """Transformer MLP: Dense(hidden) -> GELU -> dropout -> Dense(d) -> dropout.

  x: [..., d] -> [..., d] (or [..., out_dim] when given).
  """
  hidden: int
  out_dim: int | None = None
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    init = nn.initializers.xavier_uniform()
    bias_init = nn.initializers.normal(1e-6)
    y = nn.Dense(self.hidden, kernel_init=init, bias_init=bias_init, dtype=self.dtype)(x)
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = nn.Dense(self.out_dim or x.shape[-1], kernel_init=init, bias_init=bias_init,
                 dtype=self.dtype)(y)
    return nn.Dropout(self.dropout)(y, deterministic=deterministic)
