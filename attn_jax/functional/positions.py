"""Position encodings: sinusoidal 1-D, sin-cos 2-D, rotary (RoPE), ALiBi slopes and biases."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C


def sinusoidal_positions(length: int, dim: int, base: float = 10000.0,
                         dtype=jnp.float32) -> jax.Array:
  """Sinusoidal encodings of Vaswani et al.: `P[p, 2i] = sin(p / base^(2i/dim))`, `P[p, 2i+1] = cos(...)`.

  Args:
    length: number of positions.
    dim: encoding width (even).
    base: frequency base.
    dtype: output dtype.

  Returns:
    [length, dim].
  """
  if dim % 2:
    raise ValueError(f"sinusoidal_positions(): argument 'dim' must be even, got {dim}.")
  pos = jnp.arange(length, dtype=jnp.float32)[:, None]
  inv = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [dim/2]
  ang = pos * inv
  out = jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(length, dim)
  return out.astype(dtype)


def sincos_2d_positions(height: int, width: int, dim: int, temperature: float = 10000.0,
                        dtype=jnp.float32) -> jax.Array:
  """2-D sin-cos encodings for an image grid (as in MoCo v3 / big_vision).

  A quarter of the channels each hold sin(x), cos(x), sin(y), cos(y).

  Args:
    height: grid rows.
    width: grid columns.
    dim: encoding width (divisible by 4).
    temperature: frequency base.
    dtype: output dtype.

  Returns:
    [height * width, dim] in row-major (y, x) order; dim must be divisible by 4.
  """
  if dim % 4:
    raise ValueError(f"sincos_2d_positions(): argument 'dim' must be divisible by 4, got {dim}.")
  y, x = jnp.mgrid[:height, :width]
  omega = 1.0 / temperature ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim // 4))
  ya = y.reshape(-1, 1).astype(jnp.float32) * omega
  xa = x.reshape(-1, 1).astype(jnp.float32) * omega
  out = jnp.concatenate([jnp.sin(xa), jnp.cos(xa), jnp.sin(ya), jnp.cos(ya)], axis=1)
  return out.astype(dtype)


def rotary_angles(positions: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
  """Rotation angles `positions[..., None] * base^(-2i/dim)` of `apply_rotary`.

  Args:
    positions: [...] integer or float positions.
    dim: the rotated width (even).
    base: frequency base.

  Returns:
    [..., dim // 2] float32.
  """
  inv = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  return jnp.asarray(positions, jnp.float32)[..., None] * inv


def apply_rotary(x: jax.Array, positions: jax.Array | None = None,
                 base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (RoPE), "rotate-half" convention (GPT-NeoX, LLaMA).

  Channel i is paired with channel i + dim/2 and the pair is rotated by angle
  `pos * base^(-2i/dim)`, so that `<rope(q, m), rope(k, n)>` depends on m - n only.

  Args:
    x: [..., len, dim] queries or keys (dim even).
    positions: [len] or broadcastable to x.shape[:-1]; default arange(len).
    base: frequency base.

  Returns:
    [..., len, dim] in x's dtype.
  """
  C.check_rank("apply_rotary", "x", x, "[..., len, dim]", min_rank=2)
  dim = x.shape[-1]
  if dim % 2:
    C.fail("apply_rotary", "x", x, "[..., len, dim] with an even dim")
  if positions is None:
    positions = jnp.arange(x.shape[-2])
  ang = rotary_angles(positions, dim, base)          # [..., len, dim/2]
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : dim // 2], xf[..., dim // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def alibi_slopes(num_heads: int) -> jax.Array:
  """ALiBi head slopes (Press et al., "Train Short, Test Long"): a geometric sequence.

  For a power of two n the slopes are `2^(-8/n), 2^(-16/n), ..., 2^(-8)`. Otherwise the
  n' = 2^floor(log2 n) slopes of n' come first, then every other slope of 2 n' (the
  paper's reference code), so each head count gets distinct slopes in (0, 1).

  Args:
    num_heads: number of heads.

  Returns:
    [num_heads] float32.
  """
  if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
    raise C.ShapeError(f"alibi_slopes(): argument 'num_heads' must be a positive int, "
                       f"got {num_heads!r}.")

  def pow2(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  def slopes(n: int) -> list[float]:
    if n & (n - 1) == 0:
      return pow2(n)
    base = 2 ** int(math.floor(math.log2(n)))
    return pow2(base) + slopes(2 * base)[0::2][:n - base]

  return jnp.asarray(slopes(num_heads), jnp.float32)


def alibi_bias(slopes: jax.Array, q_len: int, kv_len: int | None = None,
               offset: int | jax.Array = 0) -> jax.Array:
  """The ALiBi bias `-slope * |i + offset - j|` for query i and key j.

  Under a causal mask it equals the paper's causal form `slope * (j - i)` on every visible
  key. `attention(..., alibi_slopes=)` builds it (or, in the blockwise kernel, each tile of it).

  Args:
    slopes: [..., heads] (e.g. `alibi_slopes(heads)`).
    q_len: number of queries.
    kv_len: number of keys (default q_len).
    offset: query position shift as in `causal_mask` (kv_len - q_len: aligned at the end).

  Returns:
    [..., heads, q_len, kv_len] float32.
  """
  kv_len = q_len if kv_len is None else kv_len
  dist = jnp.abs(jnp.arange(q_len)[:, None] + offset - jnp.arange(kv_len)[None, :])
  return -jnp.asarray(slopes, jnp.float32)[..., None, None] * dist.astype(jnp.float32)
