"""Stochastic depth, shared by the vision transformers."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_path(x: jax.Array, rate: float | jax.Array, rng: jax.Array | None) -> jax.Array:
  """Stochastic depth: zero a whole residual branch per example with probability `rate`.

  Survivors are rescaled by 1/(1-rate). A Python `rate` of 0 returns x unchanged; `rate`
  may also be a traced scalar (a scanned layer's rate).

  Args:
    x: [batch, ...] branch output.
    rate: drop probability per example.
    rng: PRNG key (unused when rate is 0).

  Returns:
    [batch, ...], x's shape and dtype.
  """
  if isinstance(rate, (int, float)) and rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  scale = jnp.asarray(1.0 / (1.0 - rate), x.dtype)
  return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


def drop_branch(module: nn.Module, y: jax.Array, rate: float | jax.Array,
                train: bool) -> jax.Array:
  """`drop_path` of a residual branch inside `module` (its 'dropout' RNG) when training."""
  if not train or (isinstance(rate, (int, float)) and rate == 0.0):
    return y
  return drop_path(y, rate, module.make_rng("dropout"))
