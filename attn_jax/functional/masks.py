"""Stage 2 of attention: masks and the masked softmax.

Convention: a boolean mask is True where a query may attend to a key, the same
as `jax.nn.dot_product_attention` and `flax.linen`. Masks broadcast against
scores `[..., q_len, kv_len]`, so a `[q_len, kv_len]` causal mask and a
`[batch, 1, 1, kv_len]` padding mask combine with `combine_masks`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C

# Additive bias for a blocked position. Finite (not -inf) so that fully blocked
# rows and their gradients stay NaN-free; large enough that exp() underflows to 0.
NEG_INF = -1e30


def sequence_mask(valid_lens: jax.Array, max_len: int) -> jax.Array:
  """Boolean mask of the first `valid_lens` positions.

  Args:
    valid_lens: [...] integer lengths.
    max_len: length of the masked axis.

  Returns:
    [..., max_len] bool, `out[..., j] = j < valid_lens[...]`.
  """
  return jnp.arange(max_len) < jnp.asarray(valid_lens)[..., None]


def padding_mask(token_ids: jax.Array, pad_id: int = 0) -> jax.Array:
  """True for real tokens, False for padding.

  Args:
    token_ids: [batch, len] integer ids.
    pad_id: the padding id.

  Returns:
    [batch, len] bool.
  """
  C.check_rank("padding_mask", "token_ids", token_ids, "[batch, len]", rank=2)
  return token_ids != pad_id


def make_attention_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
  """Pairwise mask from per-token masks (e.g. two `padding_mask`s).

  Args:
    query_valid: [..., q_len] bool.
    key_valid: [..., kv_len] bool.

  Returns:
    [..., q_len, kv_len] bool, True where both the query and the key are valid.
  """
  return jnp.logical_and(query_valid[..., :, None], key_valid[..., None, :])


def causal_mask(q_len: int, kv_len: int | None = None, offset: int = 0) -> jax.Array:
  """Lower-triangular mask: query i sees keys j <= i + offset.

  With `kv_len > q_len` and `offset = kv_len - q_len` the queries are the last
  `q_len` positions of the sequence (incremental decoding with a cache).

  Args:
    q_len: number of queries.
    kv_len: number of keys (default q_len).
    offset: position of query 0 among the keys.

  Returns:
    [q_len, kv_len] bool.
  """
  kv_len = q_len if kv_len is None else kv_len
  return (jnp.arange(q_len)[:, None] + offset) >= jnp.arange(kv_len)[None, :]


def window_mask(q_len: int, kv_len: int | None = None,
                window: tuple[int | None, int | None] = (None, None),
                offset: int | jax.Array = 0) -> jax.Array:
  """Sliding-window (band) mask: query i sees keys `i + offset - left <= j <= i + offset + right`.

  Args:
    q_len: number of queries.
    kv_len: number of keys (default q_len).
    window: (left, right) keys allowed before / after the query's own position; None
      leaves that side unbounded. (left, 0) is causal local attention.
    offset: the queries' position shift, as in `causal_mask` (kv_len - q_len aligns them
      at the end; a cache index while decoding). May be traced.

  Returns:
    [q_len, kv_len] bool.
  """
  kv_len = q_len if kv_len is None else kv_len
  left, right = window
  rel = (jnp.arange(q_len)[:, None] + offset) - jnp.arange(kv_len)[None, :]  # query - key
  keep = jnp.ones((q_len, kv_len), bool)
  if left is not None:
    keep = keep & (rel <= left)
  if right is not None:
    keep = keep & (rel >= -right)
  return keep


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array) -> jax.Array:
  """Packed sequences: a query sees only the keys of its own segment.

  Args:
    q_segment_ids: [..., q_len] integer segment of each query.
    kv_segment_ids: [..., kv_len] integer segment of each key (leading axes broadcast).

  Returns:
    [..., q_len, kv_len] bool, True where the ids are equal.
  """
  return jnp.asarray(q_segment_ids)[..., :, None] == jnp.asarray(kv_segment_ids)[..., None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical AND of broadcastable boolean masks; `None` entries are ignored.

  Args:
    *masks: bool arrays that broadcast together (e.g. [q_len, kv_len] and
      [batch, 1, 1, kv_len]), or None.

  Returns:
    The broadcast bool mask, or None when every entry is None.
  """
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = jnp.asarray(masks[0], bool)
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def mask_to_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Boolean mask -> additive bias: 0 where True, `NEG_INF` (clipped to `dtype`) where False.

  Args:
    mask: bool, any shape (e.g. [..., q_len, kv_len]).
    dtype: dtype of the bias.

  Returns:
    The bias, same shape as `mask`.
  """
  neg = max(NEG_INF, float(jnp.finfo(dtype).min))
  return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(neg, dtype))


def bias_to_mask(bias: jax.Array) -> jax.Array:
  """Additive bias -> boolean mask: False where the bias blocks (below half of the dtype's min).

  Args:
    bias: float, any shape (e.g. from `mask_to_bias`).

  Returns:
    bool, same shape as `bias`.
  """
  return bias > 0.5 * max(NEG_INF, float(jnp.finfo(bias.dtype).min))


def valid_lens_mask(valid_lens: jax.Array, scores_shape: tuple[int, ...],
                    fn: str = "valid_lens_mask") -> jax.Array:
  """Key-padding mask from valid lengths, broadcastable to `scores_shape`.

  Args:
    valid_lens: an integer scalar; `[batch]` (one length per sequence, applied to
      every head and query row); or `[batch, q_len]` (one length per query row).
    scores_shape: (batch, ..., q_len, kv_len).
    fn: the function name that errors name.

  Returns:
    bool mask of rank len(scores_shape) that broadcasts to `scores_shape`.
  """
  valid_lens = jnp.asarray(valid_lens)
  C.check_integer(fn, "valid_lens", valid_lens)
  nd = len(scores_shape)
  expected = "a scalar, [batch] or [batch, q_len]"
  if valid_lens.ndim > 2 or (valid_lens.ndim >= 1 and nd < 3 and valid_lens.ndim > nd - 1):
    C.fail(fn, "valid_lens", valid_lens, expected)
  if valid_lens.ndim >= 1:
    C.check_axis(fn, "valid_lens", valid_lens, 0, scores_shape[0],
                 f"{expected} with batch={scores_shape[0]}")
  if valid_lens.ndim == 2:
    C.check_axis(fn, "valid_lens", valid_lens, 1, scores_shape[-2],
                 f"{expected} with q_len={scores_shape[-2]}")
  if valid_lens.ndim == 0:
    lens = valid_lens.reshape((1,) * (nd - 1))
  elif valid_lens.ndim == 1:
    lens = valid_lens.reshape((-1,) + (1,) * (nd - 2))
  else:
    lens = valid_lens.reshape((valid_lens.shape[0],) + (1,) * (nd - 3) + (valid_lens.shape[1],))
  return sequence_mask(lens, scores_shape[-1])


def zero_unattended_values(v: jax.Array, keep: jax.Array | None,
                           scores_shape: tuple[int, ...]) -> jax.Array:
  """`v` with zeros at the keys no query may attend to (`keep` False for every query).

  Their weight is exactly 0, but 0 * NaN is NaN: zeroing them keeps a NaN/Inf in a
  padded value out of the output. `keep` broadcasts to `scores_shape` (lead + (q, kv));
  it is reduced over the axes `v` broadcasts over, so `v` keeps its shape.

  Args:
    v: [..., kv_len, d_v] values.
    keep: bool mask broadcastable to `scores_shape`, or None (returns `v`).
    scores_shape: lead + (q_len, kv_len).

  Returns:
    [..., kv_len, d_v], `v`'s shape and dtype.
  """
  if keep is None:
    return v
  keep = jnp.asarray(keep)
  n_lead = len(scores_shape) - 2
  key_ok = jnp.any(keep, axis=-2) if keep.ndim >= 2 else keep     # [..., kv]
  key_ok = key_ok.reshape((1,) * (n_lead + 1 - key_ok.ndim) + key_ok.shape)
  v_lead = (1,) * (n_lead - (v.ndim - 2)) + v.shape[:-2]
  for i in range(n_lead):
    if v_lead[i] == 1 and key_ok.shape[i] > 1:
      key_ok = jnp.any(key_ok, axis=i, keepdims=True)
  key_ok = key_ok.reshape(key_ok.shape[n_lead - (v.ndim - 2):])
  return jnp.where(key_ok[..., None], v, jnp.zeros((), v.dtype))


def masked_softmax(scores: jax.Array, valid_lens: jax.Array | None = None,
                   mask: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
  """Softmax over the last axis that gives blocked keys exactly zero weight.

  Computed in float32 for bf16/f16 inputs and returned in the input dtype.
  A row with no valid key returns all zeros, and its gradient is zero (not NaN).

  Args:
    scores: [batch, ..., q_len, kv_len] attention scores.
    valid_lens: optional lengths; `[batch]` (per sequence) or `[batch, q_len]`
      (per query row). Keys at or past the length are blocked.
    mask: optional bool mask broadcastable to `scores`, True = keep.
    bias: optional additive bias broadcastable to `scores` (added before the softmax).

  Returns:
    [batch, ..., q_len, kv_len] weights; each row sums to 1 over its valid keys (or is all 0).
  """
  fn = "masked_softmax"
  C.check_rank(fn, "scores", scores, "[..., q_len, kv_len] (at least 1 axis)", min_rank=1)
  C.check_inputs(fn, scores=scores)
  shape = scores.shape
  if mask is not None:
    C.check_broadcastable(fn, "mask", mask, shape, "a bool mask [..., q_len, kv_len]")
  if bias is not None:
    C.check_broadcastable(fn, "bias", bias, shape, "an additive bias [..., q_len, kv_len]")
  keep = mask
  if valid_lens is not None:
    C.check_rank(fn, "scores", scores, "[batch, ..., q_len, kv_len] when valid_lens is given",
                 min_rank=2)
    keep = combine_masks(keep, valid_lens_mask(valid_lens, shape, fn))
  acc = jnp.promote_types(scores.dtype, jnp.float32)
  s = scores.astype(acc)
  if bias is not None:
    s = s + bias.astype(acc)
  # jax.nn.softmax has a custom derivative, cheaper than differentiating exp/sum/divide.
  if keep is None:
    return jax.nn.softmax(s, axis=-1).astype(scores.dtype)
  weights = jax.nn.softmax(jnp.where(keep, s, NEG_INF), axis=-1)
  # Exactly 0 where blocked; a fully blocked row (uniform above) becomes all 0 with zero grads.
  weights = jnp.where(keep, weights, 0.0)
  return weights.astype(scores.dtype)
