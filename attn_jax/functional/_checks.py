"""Input checks shared by the functional API.

Every public function validates its arguments at trace time (shapes are static
under `jit`, so the checks cost nothing at run time).  A failed check raises
`ShapeError` whose message names the function, the argument, the shape it got
and the shape it needed, e.g.::

    ShapeError: attention(): argument 'k' has shape (2, 5, 7); expected
    [..., kv_len, d_k] with d_k=8 (the last axis of 'q').

One dtype rule for every function: q, k, v, scores and inputs must be floating point
(integer or boolean arrays are rejected, not promoted: cast them, e.g.
`x.astype(jnp.float32)`); `valid_lens` must be integer; masks are boolean (or 0/1).
Zero-size axes and non-positive head counts, scales or widths are rejected too.
"""
from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp


class ShapeError(ValueError):
  """An argument has the wrong rank, shape, dtype or value; the message names it."""


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
  """Raises ShapeError unless the Python number `value` is > 0 (and finite)."""
  if isinstance(value, (int, float)) and not (0 < value < float("inf")):
    raise ShapeError(f"{fn}(): argument '{name}' must be > 0, got {value}.")


def check_float(fn: str, name: str, x: Any) -> None:
  """Raises ShapeError unless `x` has a real floating dtype (float16/bfloat16/32/64)."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ShapeError(f"{fn}(): argument '{name}' has dtype {dtype}; expected a floating dtype "
                     f"(float32, bfloat16, ...): cast it, e.g. {name}.astype(jnp.float32).")


def check_integer(fn: str, name: str, x: Any, what: str = "lengths") -> None:
  """Raises ShapeError unless `x` has an integer dtype (lengths, ids); `what` names them."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ShapeError(f"{fn}(): argument '{name}' has dtype {dtype}; expected integer "
                     f"{what} (e.g. int32).")


def check_nonempty(fn: str, name: str, x: Any) -> None:
  """Raises ShapeError if `x` has a zero-size axis."""
  shape = tuple(jnp.shape(x))
  if 0 in shape:
    raise ShapeError(f"{fn}(): argument '{name}' has shape {shape}; expected every axis to "
                     "have size >= 1 (a zero-size axis).")


def check_inputs(fn: str, **arrays: Any) -> None:
  """`check_float` and `check_nonempty` for each named array (None skipped)."""
  for name, x in arrays.items():
    if x is not None:
      check_float(fn, name, x)
      check_nonempty(fn, name, x)
