"""Arguments of the attention variants, shared by `attention` and `blockwise_attention`.

- Grouped K/V heads (GQA; MQA with one K/V head): `q: [..., heads, q_len, d_k]`,
  `k: [..., kv_heads, kv_len, d_k]`, `v: [..., kv_heads, kv_len, d_v]` with
  `heads % kv_heads == 0`, found from the sizes of axis -3. Query head h reads K/V head
  `h // (heads // kv_heads)` (the grouping of `jax.nn.dot_product_attention`). K/V are
  never repeated: q is viewed as `[..., kv_heads, groups, q_len, d_k]` and K/V broadcast.
- `window=(left, right)`: query i sees keys `i' - left <= j <= i' + right` where
  `i' = i + kv_len - q_len` is its position aligned at the end (as `is_causal`); None
  leaves a side unbounded; `is_causal` sets right = 0.
- `q_segment_ids` / `kv_segment_ids`: packed sequences; a query sees the keys of its segment.
- `softcap`: `cap * tanh(s / cap)` on the scaled scores, before any bias and mask.
- `alibi_slopes`: adds `-slope * |i' - j|` per head (ALiBi).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C
from attn_jax.functional import masks as M
from attn_jax.functional import positions as P

Window = tuple[int | None, int | None]


class Variants(NamedTuple):
  """Validated variant arguments (segment ids and slopes at full rank, see `check_variants`)."""
  window: Window | None
  q_segment_ids: jax.Array | None   # int, rank len(lead) + 1, broadcastable to lead + (q_len,)
  kv_segment_ids: jax.Array | None  # int, broadcastable to lead + (kv_len,)
  softcap: float | None
  alibi_slopes: jax.Array | None    # float32, rank len(lead), broadcastable to lead

  @property
  def kernel_only(self) -> bool:
    """Whether `jax.nn.dot_product_attention` lacks a native form of some argument."""
    return (self.q_segment_ids is not None or self.softcap is not None
            or self.alibi_slopes is not None)


def head_groups(fn: str, q, k, v) -> tuple[tuple[int, ...], int]:
  """(lead, groups): the broadcast leading axes of the scores (query heads last) and the
  number of query heads per K/V head (1 without grouping)."""
  try:
    kv = tuple(jnp.broadcast_shapes(k.shape[:-2], v.shape[:-2]))
  except ValueError:
    C.fail(fn, "v", v, f"leading axes broadcastable with those of 'k' {k.shape[:-2]}")
  ql = tuple(q.shape[:-2])
  hq, hkv = (ql[-1] if ql else 1), (kv[-1] if kv else 1)
  groups = 1
  if ql and kv and hq != hkv and hq > 1:
    if hq % hkv:
      C.fail(fn, "k", k, f"[..., kv_heads, kv_len, d_k] with kv_heads dividing the {hq} query "
             "heads (axis -3 of 'q')")
    groups = hq // hkv
  try:
    if groups == 1:
      return tuple(jnp.broadcast_shapes(ql, kv)), 1
    return tuple(jnp.broadcast_shapes(ql[:-1], kv[:-1])) + (hq,), groups
  except ValueError:
    C.fail(fn, "k", k, f"leading axes broadcastable with those of 'q' {q.shape[:-2]}")


def kv_lead(lead: tuple[int, ...], groups: int) -> tuple[int, ...]:
  """The leading axes with the query heads replaced by the K/V heads."""
  return lead if groups == 1 else lead[:-1] + (lead[-1] // groups,)


def split_heads_axis(x, n_lead: int, groups: int, n_trailing: int) -> jax.Array:
  """`x` (broadcastable to lead + trailing axes) at full rank with its query-head axis split
  into (kv_heads, groups), or (1, 1) where it is 1; without groups a unit axis is inserted
  after the leading axes. Rank n_lead + 1 + n_trailing either way."""
  x = jnp.asarray(x)
  x = x.reshape((1,) * (n_lead + n_trailing - x.ndim) + x.shape)
  if groups == 1:
    return jnp.expand_dims(x, n_lead)
  h = x.shape[n_lead - 1]
  heads = (h // groups, groups) if h > 1 else (1, 1)
  return x.reshape(x.shape[:n_lead - 1] + heads + x.shape[n_lead:])


def check_window(fn: str, window) -> Window | None:
  """`window` as (left, right) (an int w means (w, w)); None when it does not restrict."""
  if window is None:
    return None
  bad = ValueError(f"{fn}(): argument 'window' must be None, an int >= 0 or a (left, right) "
                   f"pair of ints >= 0 or None, got {window!r}.")
  ok = lambda w: w is None or (isinstance(w, numbers.Integral) and not isinstance(w, bool)
                               and w >= 0)
  if ok(window) and window is not None:
    window = (window, window)
  if not isinstance(window, (tuple, list)) or len(window) != 2 or not all(map(ok, window)):
    raise bad
  left, right = (None if w is None else int(w) for w in window)
  return None if left is None and right is None else (left, right)


def band(window: Window | None, is_causal: bool) -> Window | None:
  """The keys each query may see as (left, right), causal as right = 0; None: every key."""
  left, right = window or (None, None)
  right = 0 if is_causal else right
  return None if left is None and right is None else (left, right)


def _segment_ids(fn: str, name: str, ids, lead: tuple[int, ...], length: int,
                 axis: str) -> jax.Array:
  """[len], [batch, len] (batch = the first leading axis, as `valid_lens`) or ids
  broadcastable to lead + (len,) -> full rank len(lead) + 1."""
  ids = jnp.asarray(ids)
  C.check_integer(fn, name, ids, what="segment ids")
  n = len(lead)
  expected = (f"[{axis}] or [batch, {axis}] integer ids (or broadcastable to "
              f"{lead + (length,)}) with {axis}={length}")
  if ids.ndim == 0 or ids.shape[-1] != length:
    C.fail(fn, name, ids, expected)
  full = ids
  if ids.ndim == 1:
    full = ids.reshape((1,) * n + ids.shape)
  elif ids.ndim == 2 and n >= 2:
    full = ids.reshape(ids.shape[:1] + (1,) * (n - 1) + ids.shape[1:])
  if full.ndim != n + 1 or not all(s in (1, t) for s, t in zip(full.shape, lead + (length,))):
    C.fail(fn, name, ids, expected)
  return full


def check_variants(fn: str, shape: tuple[int, ...], *, window=None, q_segment_ids=None,
                   kv_segment_ids=None, softcap=None, alibi_slopes=None) -> Variants:
  """Validates the variant arguments for scores of `shape` (lead + (q_len, kv_len))."""
  lead, (nq, nk) = tuple(shape[:-2]), shape[-2:]
  window = check_window(fn, window)
  if kv_segment_ids is not None and q_segment_ids is None:
    raise ValueError(f"{fn}(): 'kv_segment_ids' needs 'q_segment_ids' as well.")
  if q_segment_ids is not None:
    q_segment_ids = _segment_ids(fn, "q_segment_ids", q_segment_ids, lead, nq, "q_len")
    if kv_segment_ids is None:
      if nq != nk:
        raise ValueError(f"{fn}(): 'q_segment_ids' alone is for self-attention (q_len == "
                         f"kv_len); with q_len={nq}, kv_len={nk} pass 'kv_segment_ids' too.")
      kv_segment_ids = q_segment_ids
    else:
      kv_segment_ids = _segment_ids(fn, "kv_segment_ids", kv_segment_ids, lead, nk, "kv_len")
  if softcap is not None:
    if (isinstance(softcap, bool) or not isinstance(softcap, numbers.Real)
        or not 0 < softcap < math.inf):
      raise C.ShapeError(f"{fn}(): argument 'softcap' must be a Python number > 0, got "
                         f"{softcap!r}.")
    softcap = float(softcap)
  if alibi_slopes is not None:
    s = jnp.asarray(alibi_slopes)
    C.check_float(fn, "alibi_slopes", s)
    C.check_broadcastable(fn, "alibi_slopes", s, lead,
                          "[heads] slopes (e.g. alibi_slopes(heads)) or [..., heads]")
    alibi_slopes = s.reshape((1,) * (len(lead) - s.ndim) + s.shape).astype(jnp.float32)
  return Variants(window, q_segment_ids, kv_segment_ids, softcap, alibi_slopes)


def segment_keep(var: Variants) -> jax.Array | None:
  """The segment mask, broadcastable to the scores (None without segment ids)."""
  if var.q_segment_ids is None:
    return None
  return M.segment_mask(var.q_segment_ids, var.kv_segment_ids)


def dense_keep(var: Variants, shape: tuple[int, ...], is_causal: bool) -> jax.Array | None:
  """Causal, window and segment masks as one bool mask broadcastable to `shape`."""
  nq, nk = shape[-2:]
  b = band(var.window, is_causal)
  keep = None if b is None else M.window_mask(nq, nk, b, offset=nk - nq)
  return M.combine_masks(keep, segment_keep(var))


def dense_bias(var: Variants, shape: tuple[int, ...]) -> jax.Array | None:
  """The ALiBi bias [..., q_len, kv_len] (float32), or None."""
  if var.alibi_slopes is None:
    return None
  nq, nk = shape[-2:]
  return P.alibi_bias(var.alibi_slopes, nq, nk, offset=nk - nq)


def zero_unattended(v: jax.Array, keep: jax.Array, shape: tuple[int, ...],
                    groups: int) -> jax.Array:
  """`masks.zero_unattended_values` for grouped K/V heads (keep is in the query-head frame)."""
  if groups == 1:
    return M.zero_unattended_values(v, keep, shape)
  n = len(shape) - 2
  gshape = kv_lead(tuple(shape[:-2]), groups) + (groups,) + tuple(shape[-2:])
  vg = M.zero_unattended_values(v[..., None, :, :], split_heads_axis(keep, n, groups, 2), gshape)
  return vg[..., 0, :, :]
