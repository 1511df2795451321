"""Attention without the softmax: sigmoid attention and linear (kernelized) attention.

Layout as `attention`: `q: [..., q_len, d_k]`, `k: [..., kv_len, d_k]`,
`v: [..., kv_len, d_v]`; leading axes broadcast, and k/v may have fewer heads than q on
axis -3 (GQA, see `attention`).
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax.functional import _checks as C
from attn_jax.functional import _variants as V
from attn_jax.functional import core as A
from attn_jax.functional import masks as M

FeatureMap = Literal["elu1", "performer"]


def _grouped(q, k, v, groups):
  """q as [..., kv_heads, groups, n, d], k/v as [..., kv_heads, 1, m, d] (no copies)."""
  if groups == 1:
    return q, k, v
  q = q.reshape(q.shape[:-3] + (q.shape[-3] // groups, groups) + q.shape[-2:])
  return q, k[..., None, :, :], v[..., None, :, :]


def _ungrouped(out, lead):
  return out.reshape(lead + out.shape[-2:])


def sigmoid_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                      bias: float | jax.Array | None = None,
                      scale: float | None = None,
                      mask: jax.Array | None = None,
                      valid_lens: jax.Array | None = None,
                      is_causal: bool = False,
                      window: int | V.Window | None = None,
                      return_weights: bool = False):
  """Sigmoid attention: `out_i = sum_j sigmoid(s_ij + b) v_j` with `s = q k^T * scale`.

  Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid Self-Attention"
  (2024): each weight is an independent sigmoid (no normalisation over keys); the bias
  `b = -log(kv_len)` keeps the initial row sums near 1.

  Args:
    q: [..., q_len, d_k] queries.
    k: [..., kv_len, d_k] keys (fewer heads on axis -3 than q: GQA, as in `attention`).
    v: [..., kv_len, d_v] values.
    bias: a float or an array broadcastable to [..., q_len, kv_len] (default -log(kv_len)).
    scale: default 1/sqrt(d_k).
    mask: bool, broadcastable to [..., q_len, kv_len]; True = may attend. Blocked keys
      get weight 0 (also for the three below).
    valid_lens: [batch] or [batch, q_len] number of valid keys.
    is_causal: block keys after the query position (aligned at the end).
    window: sliding window (left, right) or an int w: (w, w), as in `attention`.
    return_weights: also return the weights [..., q_len, kv_len].

  Returns:
    [..., q_len, d_v] in q's dtype, or (out, weights).
  """
  fn = "sigmoid_attention"
  shape, groups = A._check_qkv(fn, q, k, v, custom_scorer=False)
  if mask is not None:
    C.check_broadcastable(fn, "mask", mask, shape, "a bool mask [..., q_len, kv_len]")
  if scale is not None:
    C.check_positive(fn, "scale", scale)
  if bias is None:
    bias = -math.log(shape[-1])
  if not isinstance(bias, (int, float)):
    C.check_float(fn, "bias", bias)
    C.check_broadcastable(fn, "bias", bias, shape,
                          "a float or an additive bias [..., q_len, kv_len]")
  var = V.check_variants(fn, shape, window=window)
  lens_keep = None if valid_lens is None else M.valid_lens_mask(valid_lens, shape, fn)
  keep = M.combine_masks(mask, lens_keep)
  if keep is not None:
    v = V.zero_unattended(v, keep, shape, groups)
  keep = M.combine_masks(keep, V.dense_keep(var, shape, is_causal))
  acc = jnp.promote_types(q.dtype, jnp.float32)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  qg, kg, vg = _grouped(q, k, v, groups)
  split = lambda x: x if groups == 1 or jnp.ndim(x) == 0 else V.split_heads_axis(
      x, len(shape) - 2, groups, 2)
  s = jnp.einsum("...qd,...kd->...qk", qg, kg, preferred_element_type=acc) * scale
  w = jax.nn.sigmoid(s + jnp.asarray(split(bias), acc))
  if keep is not None:
    w = jnp.where(split(keep), w, 0.0)
  out = A.attention_pool(w, vg).astype(q.dtype)
  if groups > 1:
    out, w = _ungrouped(out, shape[:-2]), w.reshape(shape)
  return (out, w.astype(q.dtype)) if return_weights else out


def performer_features(key: jax.Array, num_features: int, dim: int,
                       orthogonal: bool = True) -> jax.Array:
  """The random projection of FAVOR+ (Choromanski et al., "Rethinking Attention with
  Performers", 2021): rows w_r ~ N(0, I_dim). `orthogonal`: blocks of `dim` mutually
  orthogonal rows (QR of a Gaussian matrix) rescaled to chi-distributed norms, which
  lowers the estimator's variance.

  Args:
    key: PRNG key.
    num_features: number of random features m.
    dim: the feature width d_k of the queries and keys it will project.
    orthogonal: orthogonal blocks (else i.i.d. Gaussian rows).

  Returns:
    [num_features, dim] float32.
  """
  if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
    raise C.ShapeError(f"performer_features(): argument 'num_features' must be a positive int, "
                       f"got {num_features!r}.")
  return _features(key, num_features, dim, bool(orthogonal))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _features(key, num_features: int, dim: int, orthogonal: bool) -> jax.Array:
  k_dir, k_norm = jax.random.split(key)
  if not orthogonal:
    return jax.random.normal(k_dir, (num_features, dim), jnp.float32)
  n_blocks = -(-num_features // dim)
  g = jax.random.normal(k_dir, (n_blocks, dim, dim), jnp.float32)
  qmat = jnp.linalg.qr(g)[0]                       # [n_blocks, dim, dim], orthonormal columns
  w = jnp.swapaxes(qmat, -1, -2).reshape(-1, dim)[:num_features]
  norms = jnp.linalg.norm(jax.random.normal(k_norm, (num_features, dim), jnp.float32), axis=-1)
  return w * norms[:, None]


def _performer_map(x, w, is_query: bool):
  """Positive random features `exp(w x - |x|^2 / 2) / sqrt(m)`, so that E[phi(q) . phi(k)]
  = exp(q . k). A stabiliser is subtracted in the exponent: each query row's max (it
  cancels in that row's normalisation) and one max over all keys (a common factor of every
  key). [..., n, d] -> [..., n, m] float32."""
  proj = jnp.einsum("...nd,md->...nm", x, w)
  sq = 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
  axes = (-1,) if is_query else (-2, -1)
  stab = lax.stop_gradient(jnp.max(proj, axis=axes, keepdims=True))
  return jnp.exp(proj - sq - stab) / math.sqrt(w.shape[0])


def _causal_sums(fq, fk, v, chunk: int):
  """Causal numerators [..., n, d_v] and denominators [..., n] of linear attention:
  per chunk of `chunk` rows the masked [chunk, chunk] block, plus the prefix state
  `S = sum_j phi(k_j) v_j^T`, `z = sum_j phi(k_j)` of the chunks before (a scan: O(n))."""
  n = fq.shape[-2]
  c = max(1, min(chunk, n))
  n_p = -(-n // c) * c
  pad = lambda x: jnp.pad(x, ((0, 0),) * (x.ndim - 2) + ((0, n_p - n), (0, 0)))
  split = lambda x: jnp.moveaxis(pad(x).reshape(x.shape[:-2] + (n_p // c, c, x.shape[-1])), -3, 0)
  lead_s = jnp.broadcast_shapes(fk.shape[:-2], v.shape[:-2])
  tril = jnp.tril(jnp.ones((c, c), fq.dtype))

  def step(carry, xs):
    s, z = carry
    qc, kc, vc = xs
    intra = jnp.einsum("...qf,...kf->...qk", qc, kc) * tril
    num = jnp.einsum("...qf,...fd->...qd", qc, s) + jnp.einsum("...qk,...kd->...qd", intra, vc)
    den = jnp.einsum("...qf,...f->...q", qc, z) + jnp.sum(intra, axis=-1)
    s = s + jnp.einsum("...kf,...kd->...fd", kc, vc)
    return (s, z + jnp.sum(kc, axis=-2)), (num, den)

  init = (jnp.zeros(lead_s + (fk.shape[-1], v.shape[-1]), jnp.float32),
          jnp.zeros(fk.shape[:-2] + (fk.shape[-1],), jnp.float32))
  _, (num, den) = lax.scan(step, init, (split(fq), split(fk), split(v)))
  num = jnp.moveaxis(num, 0, -3).reshape(num.shape[1:-2] + (n_p, v.shape[-1]))[..., :n, :]
  den = jnp.moveaxis(den, 0, -2).reshape(den.shape[1:-1] + (n_p,))[..., :n]
  return num, den


def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                     feature_map: FeatureMap = "elu1",
                     key: jax.Array | None = None,
                     num_features: int | None = None,
                     projection: jax.Array | None = None,
                     orthogonal: bool = True,
                     scale: float | None = None,
                     causal: bool = False,
                     valid_lens: jax.Array | None = None,
                     chunk_size: int = 64) -> jax.Array:
  """Linear attention `out_i = phi(q_i) . sum_j phi(k_j) v_j^T / phi(q_i) . sum_j phi(k_j)`:
  O(n) time and memory instead of O(n^2).

  Feature maps:
    'elu1': `phi(x) = elu(x) + 1` (Katharopoulos et al., "Transformers are RNNs", 2020).
    'performer': FAVOR+ positive random features (Choromanski et al., 2021), an unbiased
      estimate of softmax attention with `scale` (default 1/sqrt(d_k)); the error falls
      as `num_features` grows. Needs `key` (a `jax.random.key`) or `projection`.

  Args:
    q: [..., q_len, d_k] queries.
    k: [..., kv_len, d_k] keys.
    v: [..., kv_len, d_v] values.
    feature_map: 'elu1' or 'performer'.
    key: PRNG key for the Performer projection (`performer_features`).
    num_features: Performer features m (default max(64, 2 * d_k)).
    projection: an explicit [m, d_k] Performer projection (then `key` is not needed).
    orthogonal: orthogonal random features (with `key`).
    scale: score scale of the softmax the Performer estimates (default 1/sqrt(d_k)).
    causal: query i sees keys j <= i (needs q_len == kv_len); computed as prefix sums
      over chunks of `chunk_size` rows (a scan), still O(n).
    valid_lens: [batch] number of valid keys (the rest are dropped).
    chunk_size: rows per chunk of the causal prefix sums.

  Returns:
    [..., q_len, d_v] in q's dtype; rows whose keys all drop out are 0.
  """
  fn = "linear_attention"
  shape, groups = A._check_qkv(fn, q, k, v, custom_scorer=False)
  if causal and shape[-2] != shape[-1]:
    C.fail(fn, "k", k, f"[..., kv_len, d_k] with kv_len = q_len = {shape[-2]} for causal=True")
  if feature_map == "elu1":
    phi_q = lambda x: jax.nn.elu(x) + 1.0
    phi_k = phi_q
  elif feature_map == "performer":
    d = q.shape[-1]
    if projection is None:
      if key is None:
        raise ValueError(f"{fn}(): feature_map='performer' needs a PRNG key in 'key' "
                         "(e.g. jax.random.key(0)) or a 'projection'.")
      projection = performer_features(key, num_features or max(64, 2 * d), d, orthogonal)
    C.check_rank(fn, "projection", projection, f"[num_features, d_k={d}]", rank=2)
    C.check_axis(fn, "projection", projection, 1, d, f"[num_features, d_k={d}]")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    root = math.sqrt(scale)  # phi(q sqrt(scale)) . phi(k sqrt(scale)) ~ exp(scale q . k)
    w = jnp.asarray(projection, jnp.float32)
    phi_q = lambda x: _performer_map(x * root, w, True)
    phi_k = lambda x: _performer_map(x * root, w, False)
  else:
    raise ValueError(f"{fn}(): argument 'feature_map' must be 'elu1' or 'performer', got "
                     f"{feature_map!r}.")
  f32 = lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
  qg, kg, vg = _grouped(f32(q), f32(k), f32(v), groups)
  fq, fk = phi_q(qg), phi_k(kg)
  if valid_lens is not None:
    C.check_integer(fn, "valid_lens", valid_lens)
    vl = jnp.asarray(valid_lens)
    if vl.ndim != 1:
      C.fail(fn, "valid_lens", vl, "[batch] valid key counts")
    C.check_axis(fn, "valid_lens", vl, 0, shape[0], f"[batch={shape[0]}] valid key counts")
    ok = jnp.arange(shape[-1]) < vl.reshape((-1,) + (1,) * (fk.ndim - 2))
    fk = jnp.where(ok[..., None], fk, 0.0)
    vg = jnp.where(ok[..., None], vg, 0.0)  # also drops NaN/Inf in padded values
  if causal:
    num, den = _causal_sums(fq, fk, vg, chunk_size)
  else:
    kv = jnp.einsum("...mf,...md->...fd", fk, vg)
    num = jnp.einsum("...nf,...fd->...nd", fq, kv)
    den = jnp.einsum("...nf,...f->...n", fq, jnp.sum(fk, axis=-2))
  out = num / jnp.where(den > 0, den, 1.0)[..., None]
  out = _ungrouped(out, shape[:-2]) if groups > 1 else out
  return jnp.broadcast_to(out, shape[:-1] + (v.shape[-1],)).astype(q.dtype)
