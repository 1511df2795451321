"""Input checks shared by the functional API.

Every public function validates its arguments at trace time (shapes are static
under `jit`, so the checks cost nothing at run time).  A failed check raises
`ShapeError` whose message names the function, the argument, the shape it got
and the shape it needed, e.g.::

    ShapeError: attention(): argument 'k' has shape (2, 5, 7); expected
    [..., kv_len, d_k] with d_k=8 (the last axis of 'q').
"""
from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp


class ShapeError(ValueError):
  """An argument has the wrong rank, shape or dtype."""


def fail(fn: str, name: str, x: Any, expected: str) -> None:
  shape = tuple(jnp.shape(x)) if x is not None else None
  raise ShapeError(f"{fn}(): argument '{name}' has shape {shape}; expected {expected}.")


def check_rank(fn: str, name: str, x: Any, expected: str, *, rank: int | None = None,
               min_rank: int | None = None) -> None:
  """Raises ShapeError naming `name` unless `x` has `rank` (or at least `min_rank`) axes."""
  try:
    if rank is not None:
      chex.assert_rank(x, rank)
    if min_rank is not None:
      chex.assert_rank(x, set(range(min_rank, 32)))
  except AssertionError:
    fail(fn, name, x, expected)


def check_axis(fn: str, name: str, x: Any, axis: int, size: int, expected: str) -> None:
  """Raises ShapeError naming `name` unless `x.shape[axis] == size`."""
  try:
    chex.assert_axis_dimension(x, axis, size)
  except AssertionError:
    fail(fn, name, x, expected)


def check_broadcastable(fn: str, name: str, x: Any, target: tuple[int, ...], expected: str) -> None:
  """Raises ShapeError unless `x` broadcasts to `target` (numpy rules)."""
  shape = tuple(jnp.shape(x))
  ok = len(shape) <= len(target) and all(
      s in (1, t) for s, t in zip(shape[::-1], target[::-1]))
  if not ok:
    fail(fn, name, x, f"{expected}, broadcastable to {target}")


def check_positive(fn: str, name: str, value: Any) -> None:
  if isinstance(value, (int, float)) and value <= 0:
    raise ValueError(f"{fn}(): argument '{name}' must be > 0, got {value}.")
