"""Images <-> patch sequences, and resampling of grid position embeddings. Pure jnp.

Images are NHWC: `[batch, height, width, channels]`. A patch sequence is
`[batch, (height/p) * (width/p), p * p * channels]` in row-major patch order, each
patch flattened in (row, column, channel) order -- the order a `[p, p, c, d]`
convolution kernel reshaped to `[p * p * c, d]` expects.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C
from attn_jax.functional import windows as W


def image_to_patches(images: jax.Array, patch_size: int) -> jax.Array:
  """Cuts images into non-overlapping square patches (a Swin window partition, flattened).

  Args:
    images: [batch, height, width, channels]; height and width divisible by patch_size.
    patch_size: patch side p in pixels.

  Returns:
    [batch, (height/p) * (width/p), p * p * channels].
  """
  fn = "image_to_patches"
  C.check_rank(fn, "images", images, "[batch, height, width, channels]", rank=4)
  p = patch_size
  if images.shape[1] % p or images.shape[2] % p:
    C.fail(fn, "images", images, f"[batch, height, width, channels] with height and width "
           f"divisible by patch_size={p}")
  win = W.window_partition(images, p)                    # [b, n, p*p, c]
  return win.reshape(win.shape[:2] + (-1,))


def patches_to_image(patches: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
  """Inverse of `image_to_patches`.

  Args:
    patches: [batch, (height/p) * (width/p), p * p * channels].
    patch_size: patch side p.
    height: image height in pixels (a multiple of p).
    width: image width in pixels (a multiple of p).

  Returns:
    [batch, height, width, channels].
  """
  fn = "patches_to_image"
  C.check_rank(fn, "patches", patches, "[batch, num_patches, p * p * channels]", rank=3)
  p = patch_size
  b, n, d = patches.shape
  if height % p or width % p or n != (height // p) * (width // p) or d % (p * p):
    C.fail(fn, "patches", patches, f"[batch, {height // p}*{width // p}, {p}*{p}*channels] "
           f"for a {height}x{width} image with patch_size={p}")
  return W.window_reverse(patches.reshape(b, n, p * p, d // (p * p)), p, height, width)


def resample_grid_embeddings(posemb: jax.Array, new_grid: tuple[int, int],
                             old_grid: tuple[int, int] | None = None,
                             method: str = "bilinear") -> jax.Array:
  """Resizes position embeddings laid out on a patch grid to another grid size.

  Used when a ViT meets a resolution other than the one its embeddings were made
  for (as in big_vision / timm `resample_abs_pos_embed`). Leading tokens (e.g. a
  class token) are not part of the grid: pass only the grid part.

  Args:
    posemb: [..., old_h * old_w, dim] in row-major grid order.
    new_grid: (new_h, new_w).
    old_grid: (old_h, old_w); default a square grid.
    method: `jax.image.resize` method ('bilinear', 'bicubic', 'nearest', ...).

  Returns:
    [..., new_h * new_w, dim].
  """
  fn = "resample_grid_embeddings"
  C.check_rank(fn, "posemb", posemb, "[..., grid_tokens, dim]", min_rank=2)
  n, d = posemb.shape[-2:]
  if old_grid is None:
    side = int(round(n ** 0.5))
    old_grid = (side, side)
  if old_grid[0] * old_grid[1] != n:
    C.fail(fn, "posemb", posemb, f"[..., {old_grid[0]}*{old_grid[1]}, dim] (old_grid={old_grid})")
  if tuple(old_grid) == tuple(new_grid):
    return posemb
  lead = posemb.shape[:-2]
  grid = posemb.reshape(lead + tuple(old_grid) + (d,))
  out = jax.image.resize(grid.astype(jnp.float32), lead + tuple(new_grid) + (d,), method=method)
  return out.reshape(lead + (new_grid[0] * new_grid[1], d)).astype(posemb.dtype)
