"""Stage 3 and the whole: attention pooling, `attention`, and classic special cases.

Layout: `q: [..., q_len, d_k]`, `k: [..., kv_len, d_k]`, `v: [..., kv_len, d_v]`.
The leading axes (`...`) are batch, heads, or anything else and broadcast; with
heads the usual layout is `[batch, heads, len, head_dim]` (as in torch's
`scaled_dot_product_attention`). `split_heads` in `multihead` produces it.
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C
from attn_jax.functional import _variants as V
from attn_jax.functional import backends as Bk
from attn_jax.functional import blockwise as Bw
from attn_jax.functional import masks as M
from attn_jax.functional import ring as R
from attn_jax.functional import scoring as S

Implementation = Literal["reference", "blockwise", "xla", "cudnn", "ring"]
IMPLEMENTATIONS = ("reference", "blockwise", "xla", "cudnn", "ring")


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout: zero each entry with probability `rate`, rescale the rest by 1/(1-rate).

  `rate == 0` returns `x` unchanged; `rate > 0` needs an explicit PRNG key `rng`.

  Args:
    x: array of any shape.
    rate: probability of zeroing an entry, in [0, 1).
    rng: PRNG key (e.g. `jax.random.key(0)`); may be None when `rate == 0`.

  Returns:
    An array of x's shape and dtype.

  Raises:
    ValueError: `rate` outside [0, 1), or `rate > 0` without `rng`.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout(): argument 'rate' must be in [0, 1), got {rate}.")
  if rate == 0.0:
    return x
  if rng is None:
    raise ValueError("dropout(): 'rate' > 0 needs a PRNG key in 'rng' (e.g. jax.random.key(0)).")
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def attention_pool(weights: jax.Array, v: jax.Array) -> jax.Array:
  """Weighted sum of values: `weights @ v`, accumulated in float32 for low precision.

  Args:
    weights: [..., q_len, kv_len] attention weights.
    v: [..., kv_len, d_v] values.

  Returns:
    [..., q_len, d_v] in v's dtype.
  """
  C.check_rank("attention_pool", "v", v, "[..., kv_len, d_v]", min_rank=2)
  C.check_axis("attention_pool", "v", v, -2, weights.shape[-1],
               f"[..., kv_len, d_v] with kv_len={weights.shape[-1]} (the last axis of 'weights')")
  acc = jnp.promote_types(v.dtype, jnp.float32)
  out = jnp.einsum("...qk,...kd->...qd", weights.astype(v.dtype), v, preferred_element_type=acc)
  return out.astype(v.dtype)


def _check_qkv(fn: str, q, k, v, custom_scorer: bool) -> tuple[tuple[int, ...], int]:
  """(scores shape lead + (q_len, kv_len), query heads per K/V head)."""
  C.check_rank(fn, "q", q, "[..., q_len, d_k] (at least 2 axes)", min_rank=2)
  C.check_rank(fn, "k", k, "[..., kv_len, d_k] (at least 2 axes)", min_rank=2)
  C.check_rank(fn, "v", v, "[..., kv_len, d_v] (at least 2 axes)", min_rank=2)
  C.check_inputs(fn, q=q, k=k, v=v)
  if not custom_scorer:
    C.check_axis(fn, "k", k, -1, q.shape[-1],
                 f"[..., kv_len, d_k] with d_k={q.shape[-1]} (the last axis of 'q')")
  C.check_axis(fn, "v", v, -2, k.shape[-2],
               f"[..., kv_len, d_v] with kv_len={k.shape[-2]} (axis -2 of 'k')")
  lead, groups = V.head_groups(fn, q, k, v)
  return lead + (q.shape[-2], k.shape[-2]), groups


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
              score_fn: S.ScoreFn | None = None,
              scale: float | None = None,
              mask: jax.Array | None = None,
              bias: jax.Array | None = None,
              valid_lens: jax.Array | None = None,
              is_causal: bool = False,
              window: int | V.Window | None = None,
              q_segment_ids: jax.Array | None = None,
              kv_segment_ids: jax.Array | None = None,
              softcap: float | None = None,
              alibi_slopes: jax.Array | None = None,
              dropout_rate: float = 0.0,
              dropout_rng: jax.Array | None = None,
              return_weights: bool = False,
              implementation: Implementation | None = None):
  """Attention in three stages: score, masked softmax, weighted pooling.

  Args:
    q: [..., q_len, d_k] queries (leading axes e.g. [batch, heads]).
    k: [..., kv_len, d_k] keys. With heads on axis -3, k and v may have fewer heads
      than q (grouped-query attention, GQA; one head: MQA): q [..., heads, q_len, d_k],
      k [..., kv_heads, kv_len, d_k], heads % kv_heads == 0; K/V are not repeated.
    v: [..., kv_len, d_v] values.
    score_fn: `(q, k) -> [..., q_len, kv_len]`; default scaled dot product
      (see `scoring`; bind parameters with functools.partial).
    scale: score scale for the default scorer (default 1/sqrt(d_k)).
    mask: bool, broadcastable to [..., q_len, kv_len]; True = may attend.
    bias: additive bias broadcastable to [..., q_len, kv_len] (e.g. relative positions).
    valid_lens: [batch] or [batch, q_len] number of valid keys (padding mask).
    is_causal: block keys after the query position (aligned at the end when kv_len > q_len).
    window: sliding window (left, right): query i sees keys
      `i' - left <= j <= i' + right` with `i' = i + kv_len - q_len`; None leaves a side
      unbounded, an int w means (w, w). Combines with `is_causal` (then right = 0).
    q_segment_ids: [q_len] or [batch, q_len] integer ids of packed sequences; a query
      attends only to keys with its id.
    kv_segment_ids: [kv_len] or [batch, kv_len] integer ids of the keys (default:
      q_segment_ids, when q_len == kv_len); needs q_segment_ids.
    softcap: logit soft-capping `softcap * tanh(s / softcap)` on the scaled scores,
      before bias and masks (Gemma 2).
    alibi_slopes: [heads] (or broadcastable to the leading axes; `alibi_slopes(heads)`)
      adds the ALiBi bias `-slope * |i' - j|` (under `is_causal`: `slope * (j - i')`).
    dropout_rate: dropout on the attention weights; needs `dropout_rng` when > 0.
    dropout_rng: PRNG key for dropout.
    return_weights: also return the weights [..., q_len, kv_len] (before dropout).
    implementation: None (the fastest correct path for the backend and shapes,
      see `backends.select_implementation`), 'reference' (the three stages in jnp;
      any scorer, dropout, weights), 'blockwise' (flash-style tiles, O(N) memory,
      see `blockwise_attention`), 'xla' or 'cudnn' (`jax.nn.dot_product_attention`;
      'cudnn' needs a GPU and fp16/bf16; no `softcap`), 'ring' (`ring.ring_attention`
      over the 'seq' axis of the `jax.set_mesh` mesh: sequence parallelism; valid_lens
      [batch], causal, segment ids, GQA). All but 'reference' take the default scorer
      only, no dropout and return_weights=False. Under `jax.set_mesh(mesh)` with a 'seq'
      axis of size > 1, None picks 'ring' for every request it supports
      (`ring.ring_supported`); others take the usual paths (XLA then gathers the sequence).

  Returns:
    out [..., q_len, d_v] in q's dtype, or (out, weights) if `return_weights`.
    Rows with no valid key output zeros on every path. Values at keys that no query
    may attend to (padding past `valid_lens`, keys masked for every query) are ignored,
    NaN/Inf included: the output is what zeros there would give.
  """
  fn = "attention"
  shape, groups = _check_qkv(fn, q, k, v, custom_scorer=score_fn is not None)
  if mask is not None:
    C.check_broadcastable(fn, "mask", mask, shape, "a bool mask [..., q_len, kv_len]")
  if bias is not None:
    C.check_broadcastable(fn, "bias", bias, shape, "an additive bias [..., q_len, kv_len]")
    C.check_float(fn, "bias", bias)
  if scale is not None:
    C.check_positive(fn, "scale", scale)
  var = V.check_variants(fn, shape, window=window, q_segment_ids=q_segment_ids,
                         kv_segment_ids=kv_segment_ids, softcap=softcap,
                         alibi_slopes=alibi_slopes)
  ring_mesh = R.context_mesh() if implementation in (None, "ring") else None
  if implementation == "ring" or ring_mesh is not None:
    lacks = R.ring_supported(q, k, v, mask=mask, bias=bias, valid_lens=valid_lens,
                             window=var.window, softcap=var.softcap,
                             alibi_slopes=var.alibi_slopes, custom_scorer=score_fn is not None,
                             dropout_rate=dropout_rate, return_weights=return_weights,
                             segment_ids=(q_segment_ids, kv_segment_ids))
    if implementation == "ring" and lacks:
      raise ValueError(f"attention(): implementation='ring' does not support: {lacks}.")
    if implementation == "ring" and ring_mesh is None:
      raise ValueError("attention(): implementation='ring' needs a mesh with a 'seq' axis of "
                       "size > 1 set by jax.set_mesh(mesh).")
    if not lacks:
      return R.context_ring_attention(q, k, v, valid_lens=valid_lens, is_causal=is_causal,
                                      q_segment_ids=q_segment_ids,
                                      kv_segment_ids=kv_segment_ids, scale=scale)
  if valid_lens is not None or mask is not None:
    keep = M.combine_masks(
        mask, None if valid_lens is None else M.valid_lens_mask(valid_lens, shape, fn))
    v = V.zero_unattended(v, keep, shape, groups)
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention(): argument 'implementation' must be None or one of "
                     f"{IMPLEMENTATIONS}, got {implementation!r}.")
  fast_ok = score_fn is None and dropout_rate == 0.0 and not return_weights
  xla_kw = dict(scale=scale, valid_lens=valid_lens, is_causal=is_causal, window=var.window,
                groups=groups)
  if implementation is None:
    implementation = Bk.select_implementation(
        q, k, v, custom_scorer=score_fn is not None, dropout_rate=dropout_rate,
        return_weights=return_weights, mask=mask, bias=bias, window=var.window,
        is_causal=is_causal, softcap=var.softcap, alibi=var.alibi_slopes is not None,
        segment_ids=var.q_segment_ids is not None)
    if implementation == "cudnn":
      try:  # cuDNN's own checks run at trace time; anything it rejects goes to XLA
        return Bk.xla_attention(q, k, v, shape, mask=mask, bias=bias, implementation="cudnn",
                                **xla_kw).astype(q.dtype)
      except (NotImplementedError, RuntimeError, ValueError):
        implementation = "xla"
  if implementation != "reference":
    if not fast_ok:
      raise ValueError(f"attention(): implementation={implementation!r} supports only the "
                       "default scorer, no dropout and return_weights=False; use "
                       "implementation='reference'.")
    if implementation == "blockwise":
      return Bw.blockwise_attention(q, k, v, scale=scale, mask=mask, bias=bias,
                                    valid_lens=valid_lens, is_causal=is_causal, window=window,
                                    q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                                    softcap=softcap, alibi_slopes=alibi_slopes)
    if var.softcap is not None:
      raise ValueError(f"attention(): implementation={implementation!r} has no 'softcap' "
                       "(jax.nn.dot_product_attention); use 'blockwise' or 'reference'.")
    if implementation == "cudnn" and jax.default_backend() != "gpu":
      raise ValueError("attention(): implementation='cudnn' needs a GPU; use None to pick "
                       "the fastest available path.")
    # segment ids and ALiBi as a dense mask and bias (no native form in jax.nn)
    mask = M.combine_masks(mask, V.segment_keep(var))
    bias = _add(bias, V.dense_bias(var, shape))
    return Bk.xla_attention(q, k, v, shape, mask=mask, bias=bias, implementation=implementation,
                            **xla_kw).astype(q.dtype)
  return _reference(q, k, v, shape, groups, var, score_fn=score_fn, scale=scale, mask=mask,
                    bias=bias, valid_lens=valid_lens, is_causal=is_causal,
                    dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                    return_weights=return_weights)


def _add(a, b):
  return b if a is None else a if b is None else a + b


def _reference(q, k, v, shape, groups, var, *, score_fn, scale, mask, bias, valid_lens,
               is_causal, dropout_rate, dropout_rng, return_weights):
  """The three stages in jnp. Grouped heads: q as [..., kv_heads, groups, q_len, d_k]
  against k, v as [..., kv_heads, 1, kv_len, d] (broadcast, not repeated)."""
  mask = M.combine_masks(mask, V.dense_keep(var, shape, is_causal))
  bias = _add(bias, V.dense_bias(var, shape))
  if groups > 1:
    n = len(shape) - 2
    if valid_lens is not None:  # in the query-head frame, then grouped with the mask
      mask = M.combine_masks(mask, M.valid_lens_mask(valid_lens, shape, "attention"))
      valid_lens = None
    q = q.reshape(q.shape[:-3] + (q.shape[-3] // groups, groups) + q.shape[-2:])
    k, v = k[..., None, :, :], v[..., None, :, :]
    mask = None if mask is None else V.split_heads_axis(mask, n, groups, 2)
    bias = None if bias is None else V.split_heads_axis(bias, n, groups, 2)
  if score_fn is None:
    score_fn = functools.partial(S.scaled_dot_product_scores, scale=scale)
  scores = score_fn(q, k)
  if var.softcap is not None:
    scores = var.softcap * jnp.tanh(scores / var.softcap)
  weights = M.masked_softmax(scores, valid_lens=valid_lens, mask=mask, bias=bias)
  dropped = dropout(weights, dropout_rate, dropout_rng)
  out = attention_pool(dropped, v).astype(q.dtype)
  if groups > 1:
    out = out.reshape(shape[:-2] + out.shape[-2:])
    weights = weights.reshape(shape)
  return (out, weights) if return_weights else out


def nadaraya_watson(x_query: jax.Array, x_keys: jax.Array, y_values: jax.Array,
                    bandwidth: float = 1.0, return_weights: bool = False):
  """Nadaraya-Watson kernel regression as attention with Gaussian-kernel scores.

  `f(x) = sum_i softmax_i(-||x - x_i||^2 / (2 bandwidth^2)) y_i`.

  Args:
    x_query: [..., n_query, d] locations to predict at.
    x_keys: [..., n_train, d] training inputs.
    y_values: [..., n_train, d_y] training targets.
    bandwidth: kernel width (> 0); small widths return the nearest key's value.
    return_weights: also return the kernel weights [..., n_query, n_train].

  Returns:
    [..., n_query, d_y] predictions, or (predictions, weights [..., n_query, n_train]).
  """
  return attention(x_query, x_keys, y_values,
                   score_fn=functools.partial(S.gaussian_kernel_scores, bandwidth=bandwidth),
                   return_weights=return_weights, implementation="reference")


def simple_self_attention(x: jax.Array, return_weights: bool = False):
  """Parameter-free self-attention `softmax(X X^T) X` (no scaling, no projections).

  Permutation-equivariant: permuting the tokens of `x` permutes the output rows.

  Args:
    x: [..., len, d] token vectors.
    return_weights: also return the weights [..., len, len].

  Returns:
    [..., len, d], or (out, weights [..., len, len]).
  """
  C.check_rank("simple_self_attention", "x", x, "[..., len, d]", min_rank=2)
  return attention(x, x, x, score_fn=S.dot_product_scores, return_weights=return_weights,
                   implementation="reference")


def projected_self_attention(x: jax.Array, w_q: jax.Array, w_k: jax.Array, w_v: jax.Array,
                             scale: float | None = None, mask: jax.Array | None = None,
                             return_weights: bool = False):
  """Self-attention with projections: `softmax((X W_q)(X W_k)^T * scale) (X W_v)`.

  Args:
    x: [..., len, d_model] tokens.
    w_q: [d_model, d_k] query projection.
    w_k: [d_model, d_k] key projection.
    w_v: [d_model, d_v] value projection.
    scale: score scale (default 1/sqrt(d_k)).
    mask: optional bool [..., len, len]; True = may attend.
    return_weights: also return the weights [..., len, len].

  Returns:
    [..., len, d_v], or (out, weights [..., len, len]).
  """
  fn = "projected_self_attention"
  C.check_rank(fn, "x", x, "[..., len, d_model]", min_rank=2)
  d = x.shape[-1]
  for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
    C.check_rank(fn, name, w, f"[d_model={d}, features]", rank=2)
    C.check_axis(fn, name, w, 0, d, f"[d_model={d}, features]")
  return attention(x @ w_q, x @ w_k, x @ w_v, scale=scale, mask=mask,
                   return_weights=return_weights)
