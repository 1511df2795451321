"""Shape changes a checkpoint may need: position tables on a new patch grid, Swin relative
position bias tables for a new window. Inputs and outputs are NumPy; the interpolation is
`jax.image.resize` (half-pixel centres, i.e. `align_corners=False`; antialiased when shrinking).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax import functional as F
from attn_jax.pretrained.report import CheckpointFormatError, shape_str


def square_grid(n: int, what: str) -> tuple[int, int]:
  """(s, s) with s * s == n, else CheckpointFormatError naming `what`."""
  s = math.isqrt(n)
  if s * s != n:
    raise CheckpointFormatError(f"{what}: {n} grid positions are not a square grid; give the "
                                "grid (ViT posemb_grid) explicitly.")
  return s, s


def resample_posemb(table: np.ndarray, n_extra: int, new_grid: tuple[int, int],
                    old_grid: tuple[int, int] | None = None,
                    method: str = "bilinear") -> np.ndarray:
  """Position table on a new patch grid; the leading (class token) rows are kept as they are.

  Args:
    table: [1, n_extra + old_h * old_w, dim], grid rows in row-major order.
    n_extra: leading rows that are not on the grid (1 for a class token, else 0).
    new_grid: (new_h, new_w); old_grid: (old_h, old_w), default square.
    method: 'bilinear' (big_vision, timm's big_vision loader) or 'bicubic' (timm's default).

  Returns:
    [1, n_extra + new_h * new_w, dim], the dtype of `table`.
  """
  grid_part = table[:, n_extra:]
  old_grid = old_grid or square_grid(grid_part.shape[1], "position table")
  out = F.resample_grid_embeddings(jnp.asarray(grid_part, jnp.float32), tuple(new_grid),
                                   old_grid=tuple(old_grid), method=method)
  return np.concatenate([table[:, :n_extra], np.asarray(out).astype(table.dtype)], axis=1)


def resample_bias_table(table: np.ndarray, new_window: int,
                        method: str = "bilinear") -> np.ndarray:
  """Swin relative position bias table for another window size.

  The table is a (2M - 1) x (2M - 1) grid of offsets (dy, dx) per head; it is resized per
  head to (2M' - 1) x (2M' - 1). The index into it is rebuilt by the model
  (`F.relative_position_index(M')`).

  Args:
    table: [(2M - 1)^2, heads].
    new_window: M'.
    method: 'bilinear' or 'bicubic'.

  Returns:
    [(2M' - 1)^2, heads], the dtype of `table`.
  """
  rows, heads = table.shape
  side = math.isqrt(rows)
  if side * side != rows or side % 2 == 0:
    raise CheckpointFormatError(f"relative position bias table {shape_str(table.shape)}: "
                                "its rows are not (2M - 1)^2 for a window M.")
  new = 2 * new_window - 1
  grid = jnp.asarray(table, jnp.float32).reshape(side, side, heads)
  out = jax.image.resize(grid, (new, new, heads), method=method)
  return np.asarray(out).reshape(new * new, heads).astype(table.dtype)
