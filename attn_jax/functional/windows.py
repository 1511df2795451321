"""Swin Transformer window pieces: partition / reverse, cyclic shift, masks, relative positions.

Pure jnp. Feature maps are `[batch, height, width, channels]`; windows are square,
`window` (M) tokens on a side, and come out as `[batch, num_windows, M * M, channels]`
with windows in row-major order and tokens row-major inside each window. Masks are
bool, True where a query may attend a key (the convention of `F.attention`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.functional import _checks as C


def window_partition(x: jax.Array, window: int) -> jax.Array:
  """Splits a feature map into non-overlapping M x M windows.

  Args:
    x: [batch, height, width, channels]; height and width divisible by `window`.
    window: window side M in tokens.

  Returns:
    [batch, (height/M) * (width/M), M * M, channels].
  """
  fn = "window_partition"
  C.check_rank(fn, "x", x, "[batch, height, width, channels]", rank=4)
  b, h, w, c = x.shape
  m = window
  if h % m or w % m:
    C.fail(fn, "x", x, f"[batch, height, width, channels] with height and width divisible "
           f"by window={m} (pad first, see pad_to_window)")
  x = x.reshape(b, h // m, m, w // m, m, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // m) * (w // m), m * m, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """Inverse of `window_partition`.

  Args:
    windows: [batch, (height/M) * (width/M), M * M, channels].
    window: window side M.
    height: feature map height (a multiple of M).
    width: feature map width (a multiple of M).

  Returns:
    [batch, height, width, channels].
  """
  fn = "window_reverse"
  C.check_rank(fn, "windows", windows, "[batch, num_windows, M * M, channels]", rank=4)
  m = window
  b, nw, t, c = windows.shape
  if height % m or width % m or nw != (height // m) * (width // m) or t != m * m:
    C.fail(fn, "windows", windows, f"[batch, {height // m}*{width // m}, {m}*{m}, channels] "
           f"for a {height}x{width} map with window={m}")
  x = windows.reshape(b, height // m, width // m, m, m, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


def cyclic_shift(x: jax.Array, shift: int) -> jax.Array:
  """Rolls a feature map up and left by `shift` tokens (Swin's SW-MSA shift).

  Args:
    x: [batch, height, width, channels].
    shift: tokens to roll along height and width.

  Returns:
    [batch, height, width, channels]; `reverse_cyclic_shift` undoes it.
  """
  C.check_rank("cyclic_shift", "x", x, "[batch, height, width, channels]", rank=4)
  return jnp.roll(x, (-shift, -shift), axis=(1, 2))


def reverse_cyclic_shift(x: jax.Array, shift: int) -> jax.Array:
  """Rolls a feature map down and right by `shift` tokens: the inverse of `cyclic_shift`.

  Args:
    x: [batch, height, width, channels].
    shift: tokens to roll along height and width.

  Returns:
    [batch, height, width, channels].
  """
  C.check_rank("reverse_cyclic_shift", "x", x, "[batch, height, width, channels]", rank=4)
  return jnp.roll(x, (shift, shift), axis=(1, 2))


def pad_to_window(x: jax.Array, window: int) -> jax.Array:
  """Zero-pads height and width at the bottom / right up to multiples of `window`.

  Args:
    x: [batch, height, width, channels].
    window: window side M.

  Returns:
    [batch, ceil(height/M) M, ceil(width/M) M, channels] (x itself when no padding is needed).
  """
  C.check_rank("pad_to_window", "x", x, "[batch, height, width, channels]", rank=4)
  ph, pw = (-x.shape[1]) % window, (-x.shape[2]) % window
  if ph == 0 and pw == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))


def _window_labels(labels: np.ndarray, window: int) -> np.ndarray:
  """[height, width] int labels -> [num_windows, M * M] labels per window token."""
  h, w = labels.shape
  m = window
  return labels.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1, m * m)


def _shift_regions(size: int, window: int, shift: int) -> np.ndarray:
  """Region id along one axis of the shifted map: 0 untouched, 1 last window, 2 wrapped."""
  r = np.zeros(size, np.int32)
  if shift > 0:
    r[size - window:size - shift] = 1
    r[size - shift:] = 2
  return r


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> jax.Array:
  """Attention mask for shifted windows (SW-MSA) on a cyclically shifted map.

  After `cyclic_shift`, the last row/column of windows mixes tokens that were far
  apart before the shift (they wrapped around). A pair may attend only if both
  tokens come from the same pre-shift region, as in the official Swin code.

  Args:
    height: height of the (padded) feature map, a multiple of `window`.
    width: width of the (padded) feature map, a multiple of `window`.
    window: window side M.
    shift: shift in tokens (0 gives an all-True mask).

  Returns:
    bool [num_windows, M * M, M * M], True = may attend.
  """
  if height % window or width % window:
    raise ValueError(f"shifted_window_mask(): height={height} and width={width} must be "
                     f"multiples of window={window}.")
  rh = _shift_regions(height, window, shift)
  rw = _shift_regions(width, window, shift)
  lab = _window_labels(rh[:, None] * 3 + rw[None, :], window)   # [nW, M*M]
  return jnp.asarray(lab[:, :, None] == lab[:, None, :])


def window_padding_mask(height: int, width: int, window: int, shift: int = 0) -> jax.Array:
  """Key mask that hides the zero padding added by `pad_to_window`.

  Args:
    height: feature map height before padding.
    width: feature map width before padding.
    window: window side M.
    shift: the cyclic shift applied after padding.

  Returns:
    bool [num_windows, 1, M * M] over the padded (and shifted) map, True = real token.
  """
  hp, wp = height + (-height) % window, width + (-width) % window
  valid = np.zeros((hp, wp), bool)
  valid[:height, :width] = True
  valid = np.roll(valid, (-shift, -shift), axis=(0, 1))
  return jnp.asarray(_window_labels(valid, window)[:, None, :])


def relative_position_index(window: int) -> jax.Array:
  """Index into Swin's relative position bias table for an M x M window.

  Token i at (y_i, x_i) and token j at (y_j, x_j) look up entry
  `(y_i - y_j + M - 1) * (2M - 1) + (x_i - x_j + M - 1)` of a table with
  (2M - 1)^2 rows, so pairs with the same offset share a bias.

  Args:
    window: window side M.

  Returns:
    int32 [M * M, M * M] with values in [0, (2M - 1)^2).
  """
  m = window
  ys, xs = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
  coords = np.stack([ys.ravel(), xs.ravel()])              # [2, M*M]
  rel = coords[:, :, None] - coords[:, None, :] + (m - 1)  # [2, M*M, M*M], in [0, 2M-2]
  return jnp.asarray(rel[0] * (2 * m - 1) + rel[1], jnp.int32)


def relative_position_bias(table: jax.Array, window: int) -> jax.Array:
  """Gathers the bias for every query/key pair of a window.

  Args:
    table: [(2M - 1)^2, heads] learned biases.
    window: window side M.

  Returns:
    [heads, M * M, M * M], to add to the attention scores.
  """
  fn = "relative_position_bias"
  C.check_rank(fn, "table", table, "[(2M-1)^2, heads]", rank=2)
  C.check_axis(fn, "table", table, 0, (2 * window - 1) ** 2,
               f"[(2M-1)^2={(2 * window - 1) ** 2}, heads] for window={window}")
  idx = relative_position_index(window)
  return jnp.transpose(table[idx], (2, 0, 1))
