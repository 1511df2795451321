"""Flax multi-head attention built from `attn_jax.functional`.

The parameters are the same plain pytree that `F.multi_head_attention` takes
(`W_q, W_k, W_v, W_o` and biases `b_*`), so weights move freely between the
module and the pure function.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F


class MultiHeadAttention(nn.Module):
  """Multi-head attention (self or cross) with dropout and an autoregressive cache.

  Attributes:
    num_heads: number of (query) heads.
    qkv_features: total query/key width (default: the query input width).
    v_features: total value width (default: qkv_features).
    out_features: output width (default: the query input width).
    dropout_rate: dropout on the attention weights (active when not deterministic).
    use_bias: biases on the four projections.
    decode: keep a key/value cache for incremental self-attention decoding. Initialise
      with a full-length input (`init` with `[batch, max_len, d]`) so the cache has
      `max_len` slots; then call with one (or a few) new tokens at a time.
    sow_weights: when the 'intermediates' collection is mutable (`apply(...,
      mutable=['intermediates'])`), store the attention weights [batch, heads, q_len, kv_len]
      there under 'attention_weights'. Only such a call (or `return_weights=True`) takes the
      reference path; every other call goes through `F.attention`'s dispatch (blockwise
      kernel on CPU, cuDNN flash attention on GPU).
    implementation: passed to `F.attention`.
    dtype: computation dtype (e.g. bfloat16); params are kept in param_dtype.
    num_kv_heads: K/V heads (default num_heads); fewer is grouped-query attention (GQA;
      1: multi-query). W_k, W_v and the cache then hold num_kv_heads heads of
      qkv_features / num_heads and v_features / num_heads features.
    window: sliding window (left, right) (or an int w: (w, w)), see `F.attention`.
    softcap: logit soft-capping `softcap * tanh(s / softcap)`.
    position: 'none', 'rope' (rotary embeddings on queries and keys, `F.apply_rotary`,
      at `positions` / `kv_positions`) or 'alibi' (`F.alibi_slopes(num_heads)`).
    rope_base: RoPE frequency base.
  """
  num_heads: int
  qkv_features: int | None = None
  v_features: int | None = None
  out_features: int | None = None
  dropout_rate: float = 0.0
  use_bias: bool = True
  decode: bool = False
  sow_weights: bool = False
  implementation: str | None = None
  kernel_init: Any = nn.initializers.xavier_uniform()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  num_kv_heads: int | None = None
  window: Any = None
  softcap: float | None = None
  position: str = "none"
  rope_base: float = 10000.0

  def _kv_heads(self) -> int:
    kv = self.num_kv_heads or self.num_heads
    if self.num_heads % kv:
      raise ValueError(f"MultiHeadAttention: num_kv_heads={kv} must divide "
                       f"num_heads={self.num_heads}.")
    if self.position not in POSITIONS:
      raise ValueError(f"MultiHeadAttention: position must be one of {POSITIONS}, got "
                       f"{self.position!r}.")
    return kv

  def _params(self, d_q: int, d_k: int, d_v: int) -> dict[str, jax.Array]:
    qk = self.qkv_features or d_q
    vf = self.v_features or qk
    out = self.out_features or d_q
    for name, feats in (("qkv_features", qk), ("v_features", vf)):
      if feats % self.num_heads:
        raise ValueError(f"MultiHeadAttention: {name}={feats} is not divisible by "
                         f"num_heads={self.num_heads}.")
    kv = self._kv_heads()
    kv_qk, kv_v = qk // self.num_heads * kv, vf // self.num_heads * kv
    shapes = {"q": (d_q, qk), "k": (d_k, kv_qk), "v": (d_v, kv_v), "o": (vf, out)}
    p = {}
    for n, shape in shapes.items():
      p[f"W_{n}"] = self.param(f"W_{n}", self.kernel_init, shape, self.param_dtype)
      if self.use_bias:
        p[f"b_{n}"] = self.param(f"b_{n}", nn.initializers.zeros_init(), shape[1:],
                                 self.param_dtype)
    dtype = self.dtype or jnp.result_type(self.param_dtype)
    return jax.tree.map(lambda a: a.astype(dtype), p)

  @nn.compact
  def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None, *,
               x_v: jax.Array | None = None,
               mask: jax.Array | None = None, bias: jax.Array | None = None,
               valid_lens: jax.Array | None = None, is_causal: bool = False,
               q_segment_ids: jax.Array | None = None,
               kv_segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None,
               kv_positions: jax.Array | None = None,
               deterministic: bool = True, return_weights: bool = False):
    """Attend from `x_q` to `x_kv` (self-attention when `x_kv` is None).

    Args:
      x_q: [batch, q_len, d_q].
      x_kv: [batch, kv_len, d_k] or None.
      x_v: [batch, kv_len, d_v] values if they differ from x_kv.
      mask: bool broadcastable to [batch, heads, q_len, kv_len], True = attend.
      bias: additive, broadcastable to [batch, heads, q_len, kv_len].
      valid_lens: [batch] or [batch, q_len] valid key counts.
      is_causal: causal self-attention. With `decode=True` causality comes from the cache.
      q_segment_ids: [batch, q_len] integer ids of packed sequences; a query attends
        only to keys with its id. Not with `decode`.
      kv_segment_ids: [batch, kv_len] integer ids of the keys (default: q_segment_ids
        when q_len == kv_len, e.g. self-attention); needs q_segment_ids. Not with `decode`.
      positions: [batch, q_len] or [q_len] RoPE positions of the queries (default:
        0, 1, ...; while decoding, the cache index onwards), e.g. restarting per segment.
      kv_positions: RoPE positions of the keys (default: `positions` for self-attention,
        else 0, 1, ...).
      deterministic: disables dropout; otherwise the 'dropout' RNG stream is used.
      return_weights: also return the weights [batch, heads, q_len, kv_len] (reference path).

    Returns:
      [batch, q_len, out_features], or (out, weights) if `return_weights`.
    """
    self_attention = x_kv is None
    x_kv = x_q if x_kv is None else x_kv
    x_v = x_kv if x_v is None else x_v
    p = self._params(x_q.shape[-1], x_kv.shape[-1], x_v.shape[-1])
    dtype = p["W_q"].dtype
    x_q, x_kv, x_v = (x.astype(dtype) for x in (x_q, x_kv, x_v))
    h, kv = self.num_heads, self._kv_heads()
    q = F.project_heads(x_q, p["W_q"], p.get("b_q"), h)
    k = F.project_heads(x_kv, p["W_k"], p.get("b_k"), kv)
    v = F.project_heads(x_v, p["W_v"], p.get("b_v"), kv)
    rope = self.position == "rope"
    rotate = lambda x, pos: F.apply_rotary(x, _head_axis(pos), self.rope_base) if rope else x
    window, alibi = self.window, None
    if self.position == "alibi":
      alibi = F.alibi_slopes(h)
    if self.decode:
      if q_segment_ids is not None or kv_segment_ids is not None:
        raise ValueError("MultiHeadAttention: decode=True takes no segment ids (one "
                         "sequence per cache row).")
      start = self._cache_index()
      pos = jnp.arange(q.shape[-2]) + start if positions is None else positions
      q = rotate(q, pos)
      k, v = self._update_cache(rotate(k, pos), v)
      # causal within the new tokens and nothing past them, as a band from the cache index
      mask = F.combine_masks(mask, F.window_mask(q.shape[-2], k.shape[-2], (_left(window), 0),
                                                 start))
      if alibi is not None:  # the queries sit at the cache index: an explicit [h, new, max] bias
        ab = F.alibi_bias(alibi, q.shape[-2], k.shape[-2], offset=start)
        bias = ab if bias is None else bias + ab
      window, alibi, is_causal = None, None, False
    elif rope:
      pos = jnp.arange(q.shape[-2]) if positions is None else positions
      kv_pos = kv_positions if kv_positions is not None else (
          pos if self_attention else jnp.arange(k.shape[-2]))
      q, k = rotate(q, pos), rotate(k, kv_pos)
    rate = 0.0 if deterministic else self.dropout_rate
    rng = self.make_rng("dropout") if rate > 0 else None
    sow = self.sow_weights and self.is_mutable_collection("intermediates")
    want = sow or return_weights
    res = F.attention(q, k, v, mask=mask, bias=bias, valid_lens=valid_lens, is_causal=is_causal,
                      window=window, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                      softcap=self.softcap, alibi_slopes=alibi,
                      dropout_rate=rate, dropout_rng=rng, return_weights=want,
                      implementation=None if want else self.implementation)
    weights = None
    if want:
      res, weights = res
    if sow:
      self.sow("intermediates", "attention_weights", weights)
    out = F.project_out(res, p["W_o"], p.get("b_o"))
    return (out, weights) if return_weights else out

  def _cache_index(self) -> jax.Array:
    """The cache slot of the first new token (0 while `init` creates the cache)."""
    if not self.has_variable("cache", "cache_index"):
      return jnp.array(0, jnp.int32)
    return self.get_variable("cache", "cache_index")

  def _update_cache(self, k: jax.Array, v: jax.Array):
    """Writes the new keys/values at the cache index; returns the full cache.

    k, v: [batch, kv_heads, new_len, head_dim]. Returns keys/values [batch, kv_heads,
    max_len, head_dim] (at `init`, with the full-length input: k and v themselves).
    """
    initializing = not self.has_variable("cache", "cached_key")
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    idx = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if initializing:  # `init` call with the full-length input: ordinary causal attention
      return k, v
    i = idx.value
    zero = jnp.array(0, jnp.int32)
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (zero, zero, i, zero))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (zero, zero, i, zero))
    idx.value = i + k.shape[-2]
    return ck.value, cv.value


POSITIONS = ("none", "rope", "alibi")


def _head_axis(pos: jax.Array) -> jax.Array:
  """RoPE positions [batch, len] -> [batch, 1, len] (broadcast over heads); [len] as is."""
  pos = jnp.asarray(pos)
  return pos[:, None, :] if pos.ndim == 2 else pos


def _left(window) -> int | None:
  """The left extent of a layer's `window` (None: unbounded)."""
  if window is None:
    return None
  return window if isinstance(window, int) else window[0]


def _additive_params(module: nn.Module, d_q: int, d_k: int | None,
                     hidden: int) -> dict[str, jax.Array]:
  """Declares the `F.additive_scores` parameters {'W_q', 'W_k', 'v'} on `module` ('W_k' only
  when `d_k` is given: otherwise the caller passes projected keys)."""
  init = nn.initializers.xavier_uniform()
  params = {"W_q": module.param("W_q", init, (d_q, hidden)),
            "v": module.param("v", nn.initializers.normal(1.0 / hidden ** 0.5), (hidden,))}
  if d_k is not None:
    params["W_k"] = module.param("W_k", init, (d_k, hidden))
  return params


class AdditiveAttention(nn.Module):
  """Bahdanau attention `v^T tanh(W_q q + W_k k)` with dropout on the weights.

  Attributes:
    hidden: width of the tanh layer.
    dropout_rate: dropout on the weights when not deterministic.
    sow_weights: store the weights in 'intermediates' / 'attention_weights' (when that
      collection is mutable).
    project_keys: apply `W_k` here; False: the keys come projected ([batch, kv_len, hidden],
      e.g. from a Dense applied once per source sentence), which saves a recurrent decoder
      from projecting the same keys at every step.
  """
  hidden: int
  dropout_rate: float = 0.0
  sow_weights: bool = False
  project_keys: bool = True

  @nn.compact
  def __call__(self, queries: jax.Array, keys: jax.Array, values: jax.Array, *,
               valid_lens: jax.Array | None = None, mask: jax.Array | None = None,
               deterministic: bool = True, return_weights: bool = False):
    """Additive-score attention from `queries` to `keys`, pooling `values`.

    Args:
      queries: [batch, q_len, d_q].
      keys: [batch, kv_len, d_k] ([batch, kv_len, hidden] when not `project_keys`).
      values: [batch, kv_len, d_v].
      valid_lens: [batch] or [batch, q_len] number of valid keys (padding mask).
      mask: bool, broadcastable to [batch, q_len, kv_len]; True = may attend.
      deterministic: disables dropout; otherwise the 'dropout' RNG stream is used.
      return_weights: also return the weights [batch, q_len, kv_len] (before dropout).

    Returns:
      [batch, q_len, d_v], or (out, weights) if `return_weights`.
    """
    d_k = keys.shape[-1] if self.project_keys else None
    params = _additive_params(self, queries.shape[-1], d_k, self.hidden)
    rate = 0.0 if deterministic else self.dropout_rate
    out, weights = F.attention(
        queries, keys, values, score_fn=lambda q, k: F.additive_scores(q, k, params),
        valid_lens=valid_lens, mask=mask, dropout_rate=rate,
        dropout_rng=self.make_rng("dropout") if rate > 0 else None, return_weights=True)
    if self.sow_weights and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attention_weights", weights)
    return (out, weights) if return_weights else out


class LuongAttention(nn.Module):
  """Luong et al. (2015) global attention with the 'dot', 'general' or 'concat' score.

  - dot: `h_t . h_s` (query and key widths must match);
  - general: `h_t W_a . h_s` (bilinear; `W_a: [d_q, d_k]`), i.e. dot-product scores of the
    projected query;
  - concat: `v^T tanh(W_a [h_t; h_s])`, which equals `F.additive_scores` with `W_a` split
    into its query and key halves.

  Attributes:
    score: 'dot' | 'general' | 'concat'.
    hidden: width of the tanh layer for 'concat' (default: the query width).
    sow_weights: store the weights in 'intermediates' / 'attention_weights' (when that
      collection is mutable).
  """
  score: str = "general"
  hidden: int | None = None
  sow_weights: bool = False

  @nn.compact
  def __call__(self, queries: jax.Array, keys: jax.Array, values: jax.Array, *,
               valid_lens: jax.Array | None = None, mask: jax.Array | None = None,
               return_weights: bool = False):
    """Luong attention from `queries` to `keys`, pooling `values` (no dropout).

    Args:
      queries: [batch, q_len, d_q].
      keys: [batch, kv_len, d_k] (d_k == d_q for 'dot').
      values: [batch, kv_len, d_v].
      valid_lens: [batch] or [batch, q_len] number of valid keys (padding mask).
      mask: bool, broadcastable to [batch, q_len, kv_len]; True = may attend.
      return_weights: also return the weights [batch, q_len, kv_len].

    Returns:
      [batch, q_len, d_v], or (out, weights) if `return_weights`.

    Raises:
      ValueError: an unknown `score`.
    """
    init = nn.initializers.xavier_uniform()
    if self.score == "dot":
      score_fn = F.dot_product_scores
    elif self.score == "general":
      w_a = self.param("W_a", init, (queries.shape[-1], keys.shape[-1]))
      queries = queries @ w_a  # (h_t W_a) . h_s: the bilinear score as a dot product
      score_fn = F.dot_product_scores
    elif self.score == "concat":
      params = _additive_params(self, queries.shape[-1], keys.shape[-1],
                                self.hidden or queries.shape[-1])
      score_fn = functools.partial(F.additive_scores, params=params)
    else:
      raise ValueError(f"LuongAttention: score must be 'dot', 'general' or 'concat', "
                       f"got {self.score!r}.")
    out, weights = F.attention(queries, keys, values, score_fn=score_fn, valid_lens=valid_lens,
                               mask=mask, return_weights=True)
    if self.sow_weights and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "attention_weights", weights)
    return (out, weights) if return_weights else out
