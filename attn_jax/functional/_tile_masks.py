"""Score tiles of the blockwise kernel: masks, biases, soft-capping and the tiles to visit.

The kernel (`blockwise.py`) sees, with Z the flattened K/V leading axes and G the query
heads per K/V head (1 without grouped heads):

- q `[Z, G, nq_p, d_k]`, k `[Z, nk_p, d_k]`, v `[Z, nk_p, d_v]` (lengths padded to tiles);
- pairwise masks and biases at full rank `[*lead, G|1, nq_p|1, nk_p|1]`, lead = the K/V
  leading axes or 1 where the array does not vary (`pairwise`);
- per-row arrays `[Z|1, G|1, len]` (valid lengths, segment ids) and ALiBi slopes
  `[Z|1, G|1]` (`rows`), collected in `Extras`.

A score tile is `[Z, G, block_q, block_k]`. Query i of the unpadded sequence sits at
position `i + kv_len - q_len` (aligned at the end, as `is_causal`), against which the
band `(left, right)` (window and causal) and the ALiBi distance are measured.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax.functional import _variants as V
from attn_jax.functional import masks as M


class Extras(NamedTuple):
  """The kernel's optional non-differentiable inputs (a pytree; None = absent)."""
  mask: jax.Array | None = None    # bool, pairwise
  lens: jax.Array | None = None    # int32 [Z|1, G|1, nq_p]: valid keys per query row
  q_seg: jax.Array | None = None   # int32 [Z|1, G|1, nq_p]
  kv_seg: jax.Array | None = None  # int32 [Z|1, G|1, nk_p]
  slopes: jax.Array | None = None  # float32 [Z|1, G|1]: ALiBi slopes (constants, no gradient)


def lens_for_rows(valid_lens, shape, fn) -> jax.Array:
  """valid_lens (scalar, [batch], [batch, q_len]) -> an array broadcastable to shape[:-1]."""
  M.valid_lens_mask(valid_lens, shape, fn)  # validates; its result is unused (DCE'd under jit)
  vl = jnp.asarray(valid_lens)
  nd = len(shape)
  if vl.ndim == 0:
    return vl
  if vl.ndim == 1:
    return vl.reshape((-1,) + (1,) * (nd - 2))
  return vl.reshape((vl.shape[0],) + (1,) * (nd - 3) + (vl.shape[1],))


def pairwise(x, n_lead: int, groups: int, nq_p: int, nk_p: int) -> jax.Array:
  """A mask/bias broadcastable to lead + (q_len, kv_len) -> full rank with the head axis
  split (`_variants.split_heads_axis`), padded along its non-1 q/kv axes."""
  x = V.split_heads_axis(x, n_lead, groups, 2)
  pq = nq_p - x.shape[-2] if x.shape[-2] > 1 else 0
  pk = nk_p - x.shape[-1] if x.shape[-1] > 1 else 0
  return jnp.pad(x, ((0, 0),) * (x.ndim - 2) + ((0, pq), (0, pk)))


def rows(x, n_lead: int, groups: int, zlead: tuple[int, ...],
         trailing: tuple[int, ...]) -> jax.Array:
  """x broadcastable to lead + trailing -> [Z, G|1, *trailing], or [1, G|1, *trailing]
  when it does not vary over the K/V leading axes."""
  x = V.split_heads_axis(x, n_lead, groups, len(trailing))
  xl, g = x.shape[:len(zlead)], x.shape[len(zlead)]
  if all(d == 1 for d in xl):
    return jnp.broadcast_to(x, xl + (g,) + trailing).reshape((1, g) + trailing)
  return jnp.broadcast_to(x, zlead + (g,) + trailing).reshape((-1, g) + trailing)


def tile(x, lead, qi, ki, bq, bk):
  """The [Z or 1, G or 1, bq or 1, bk or 1] tile of a pairwise array at rows qi.., cols ki.."""
  xl, (xg, xq, xk) = x.shape[:-3], x.shape[-3:]
  sq, sk = (bq if xq > 1 else 1), (bk if xk > 1 else 1)
  t = lax.dynamic_slice(x, (0,) * (len(xl) + 1) + (qi if xq > 1 else 0, ki if xk > 1 else 0),
                        xl + (xg, sq, sk))
  if all(d == 1 for d in xl):
    return t.reshape(1, xg, sq, sk)
  return jnp.broadcast_to(t, lead + (xg, sq, sk)).reshape(-1, xg, sq, sk)


def untile(t, x_shape, lead):
  """Inverse of `tile` for gradients: sum a [Z, G, bq, bk] tile over x's broadcast axes."""
  t = t.reshape(tuple(lead) + t.shape[1:])
  return jnp.sum(t, axis=tuple(i for i, d in enumerate(x_shape) if d == 1), keepdims=True)


def add_tile(buf, t, qi, ki):
  """buf[..., qi:qi+bq, ki:ki+bk] += t, where t's pair axes of size 1 stay at 0."""
  starts = (0,) * (buf.ndim - 2) + (qi if buf.shape[-2] > 1 else 0, ki if buf.shape[-1] > 1 else 0)
  return lax.dynamic_update_slice(buf, lax.dynamic_slice(buf, starts, t.shape) + t, starts)


def _row_tile(x, start, size):
  return lax.dynamic_slice_in_dim(x, start, size, axis=2)


def band_of(cfg) -> V.Window | None:
  """(left, right) keys around each query's position (causal: right = 0); None: all keys."""
  return V.band(cfg.window, cfg.causal)


def _in_band(cfg, rows_, cols):
  left, right = band_of(cfg)
  rel = rows_ + (cfg.kv_len - cfg.q_len) - cols  # query position - key position
  keep = None
  if left is not None:
    keep = rel <= left
  if right is not None:
    keep = rel >= -right if keep is None else keep & (rel >= -right)
  return keep


def scores(cfg, qt, kt, qi, ki, ex: Extras, bias, diag):
  """Score tile [Z, G, bq, bk] in float32 (qt already scaled) with -inf at blocked keys,
  and `tanh(raw / softcap)` (the backward's derivative through the cap) or None.

  Order: raw = q k^T * scale; softcap; + bias + ALiBi; masks (valid lengths, mask,
  segments, and on the band's edge tiles (`diag`) the window / causal band)."""
  bq, bk = cfg.block_q, cfg.block_k
  # (G, bq) merged into one axis for the matmul: a plain batched dot whatever G is
  s = jnp.einsum("zqd,zkd->zqk", qt.reshape(qt.shape[0], -1, qt.shape[-1]), kt,
                 preferred_element_type=jnp.float32).reshape(qt.shape[:-1] + (bk,))
  th = None
  if cfg.softcap is not None:
    th = jnp.tanh(s * (1.0 / cfg.softcap))
    s = cfg.softcap * th
  if bias is not None:
    s = s + tile(bias, cfg.lead, qi, ki, bq, bk).astype(jnp.float32)
  rows_ = qi + lax.broadcasted_iota(jnp.int32, (1, 1, bq, 1), 2)
  cols = ki + lax.broadcasted_iota(jnp.int32, (1, 1, 1, bk), 3)
  if ex.slopes is not None:  # ALiBi, computed per tile: no [q_len, kv_len] bias exists
    dist = jnp.abs(rows_ + (cfg.kv_len - cfg.q_len) - cols).astype(jnp.float32)
    s = s - ex.slopes[..., None, None] * dist
  keep = None
  if ex.lens is not None:
    keep = cols < _row_tile(ex.lens, qi, bq)[..., None]
  if ex.mask is not None:
    m = tile(ex.mask, cfg.lead, qi, ki, bq, bk)
    keep = m if keep is None else keep & m
  if ex.q_seg is not None:
    same = _row_tile(ex.q_seg, qi, bq)[..., :, None] == _row_tile(ex.kv_seg, ki, bk)[..., None, :]
    keep = same if keep is None else keep & same
  if diag:  # only on tiles that straddle an edge of the band
    c = _in_band(cfg, rows_, cols)
    if causal_only(cfg, ex):  # then keep is None
      # A [1, 1, bq, bk] additive -inf bias instead of a select on the [Z, G, bq, bk] scores:
      # XLA:CPU keeps an add inside the fused matmul-softmax-matmul kernel.
      return s + jnp.where(c, 0.0, -jnp.inf), th
    keep = c if keep is None else keep & c
  return (s if keep is None else jnp.where(keep, s, -jnp.inf)), th


def causal_only(cfg, ex: Extras) -> bool:
  """Causal with no window, mask, lengths or segments and every query seeing key 0 (kv_len
  >= q_len): key tile 0, which every loop visits first, then gives each row a finite max,
  so later -inf scores only ever give exp(-inf) = 0 and the softmax needs no NaN guard."""
  return (band_of(cfg) == (None, 0) and ex.mask is None and ex.lens is None
          and ex.q_seg is None and cfg.kv_len >= cfg.q_len)


def may_block(cfg, ex: Extras, diag) -> bool:
  """Whether a row's running max can be -inf (then it needs the NaN-safe softmax).
  Without that the plain form stays free of selects, which XLA:CPU fuses into one kernel
  with the two matmuls (a select splits it into separate passes over the tile)."""
  return (ex.mask is not None or ex.lens is not None or ex.q_seg is not None
          or (bool(diag) and not causal_only(cfg, ex)))


def k_tiles(cfg, qi, n_kb):
  """Key tiles of the query tile at row qi as (lo, a, b, hi): [lo, a) straddle the band's
  left edge, [a, b) lie inside it for every row, [b, hi) straddle its right edge; tiles
  outside [lo, hi) are not visited. Python ints where they do not depend on qi."""
  band = band_of(cfg)
  lo, a, b, hi = 0, 0, n_kb, n_kb
  if band is None:
    return lo, a, b, hi
  left, right = band
  bq, bk, off = cfg.block_q, cfg.block_k, cfg.kv_len - cfg.q_len
  first, last = qi + off, qi + bq - 1 + off  # the tile's first and last query positions
  if right is not None:
    hi = jnp.clip((last + right) // bk + 1, 0, n_kb)
    b = jnp.clip((first + right + 1) // bk, 0, hi)
  if left is not None:
    lo = jnp.clip(jnp.maximum(first - left, 0) // bk, 0, hi)
    a = jnp.clip(-(-(last - left) // bk), lo, hi)
    if right is not None:  # (else b = n_kb stays static: no loop that never runs)
      b = jnp.clip(b, a, hi)
  return lo, a, b, hi


def q_tiles(cfg, ki, n_qb):
  """Query tiles that see the key tile at column ki, as (lo, a, b, hi): [lo, a) and
  [b, hi) straddle an edge of the band, [a, b) see every key of the tile."""
  band = band_of(cfg)
  lo, a, b, hi = 0, 0, n_qb, n_qb
  if band is None:
    return lo, a, b, hi
  left, right = band
  bq, bk, off = cfg.block_q, cfg.block_k, cfg.kv_len - cfg.q_len
  if left is not None:
    hi = jnp.clip((ki + bk - 1 + left - off) // bq + 1, 0, n_qb)
    b = jnp.clip((ki - off + left + 1) // bq, 0, hi)
  if right is not None:
    lo = jnp.clip(jnp.maximum(ki - right - off, 0) // bq, 0, hi)
    a = jnp.clip(-(-(ki + bk - 1 - off - right) // bq), lo, hi)
    if left is not None:
      b = jnp.clip(b, a, hi)
  return lo, a, b, hi
