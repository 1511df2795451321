"""Affine sampling grids and bilinear sampling for Spatial Transformer Networks. Pure jnp.

Same conventions as `torch.nn.functional.affine_grid` / `grid_sample` with
`align_corners=False`, but NHWC images: normalised coordinates run from -1 (left /
top edge of the first pixel) to +1 (right / bottom edge of the last pixel), and a
grid holds (x, y) pairs.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C


def affine_grid(theta: jax.Array, size: Sequence[int]) -> jax.Array:
  """Sampling grid of an affine transform (output -> input coordinates).

  Args:
    theta: [batch, 2, 3] affine matrices acting on normalised (x, y, 1) column vectors.
    size: output size, (height, width) or NHWC (batch, height, width, channels).

  Returns:
    [batch, height, width, 2] normalised (x, y) input coordinates per output pixel.
  """
  fn = "affine_grid"
  C.check_rank(fn, "theta", theta, "[batch, 2, 3]", rank=3)
  if theta.shape[1:] != (2, 3):
    C.fail(fn, "theta", theta, "[batch, 2, 3]")
  if len(size) not in (2, 4):
    raise ValueError(f"affine_grid(): argument 'size' must be (height, width) or "
                     f"(batch, height, width, channels), got {tuple(size)}.")
  h, w = (size[1], size[2]) if len(size) == 4 else (size[0], size[1])
  # pixel centres with align_corners=False: (2 i + 1) / n - 1
  xs = (2.0 * jnp.arange(w, dtype=jnp.float32) + 1.0) / w - 1.0
  ys = (2.0 * jnp.arange(h, dtype=jnp.float32) + 1.0) / h - 1.0
  gy, gx = jnp.meshgrid(ys, xs, indexing="ij")
  base = jnp.stack([gx, gy, jnp.ones_like(gx)], axis=-1)        # [h, w, 3]
  return jnp.einsum("hwk,bjk->bhwj", base, theta.astype(jnp.float32))


def grid_sample(images: jax.Array, grid: jax.Array) -> jax.Array:
  """Bilinear sampling of `images` at normalised grid points, zeros outside the image.

  Args:
    images: [batch, in_height, in_width, channels].
    grid: [batch, out_height, out_width, 2] normalised (x, y) coordinates in [-1, 1]
      (see `affine_grid`); points outside read zeros.

  Returns:
    [batch, out_height, out_width, channels] in images' dtype.
  """
  fn = "grid_sample"
  C.check_rank(fn, "images", images, "[batch, height, width, channels]", rank=4)
  C.check_rank(fn, "grid", grid, "[batch, out_height, out_width, 2]", rank=4)
  C.check_axis(fn, "grid", grid, -1, 2, "[batch, out_height, out_width, 2] (x, y) pairs")
  C.check_axis(fn, "grid", grid, 0, images.shape[0],
               f"[batch={images.shape[0]}, out_height, out_width, 2] (batch of 'images')")
  _, h, w, _ = images.shape
  x = ((grid[..., 0] + 1.0) * w - 1.0) / 2.0   # pixel coordinates, centres at integers
  y = ((grid[..., 1] + 1.0) * h - 1.0) / 2.0
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx1, wy1 = x - x0, y - y0
  wx0, wy0 = 1.0 - wx1, 1.0 - wy1
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

  def corner(img, yy, xx):  # img [h, w, c]; yy, xx [oh, ow] -> [oh, ow, c], zero outside
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    vals = img[jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)]
    return jnp.where(inside[..., None], vals, 0)

  def one(img, x0, y0, wx0, wx1, wy0, wy1):
    img = img.astype(jnp.float32)
    out = (corner(img, y0, x0) * (wy0 * wx0)[..., None]
           + corner(img, y0, x0 + 1) * (wy0 * wx1)[..., None]
           + corner(img, y0 + 1, x0) * (wy1 * wx0)[..., None]
           + corner(img, y0 + 1, x0 + 1) * (wy1 * wx1)[..., None])
    return out

  out = jax.vmap(one)(images, x0, y0, wx0, wx1, wy0, wy1)
  return out.astype(images.dtype)


def identity_theta(batch: int = 1, dtype=jnp.float32) -> jax.Array:
  """Identity affine matrices (what a Spatial Transformer starts from).

  Args:
    batch: number of matrices.
    dtype: output dtype.

  Returns:
    [batch, 2, 3].
  """
  return jnp.broadcast_to(jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype), (batch, 2, 3))
