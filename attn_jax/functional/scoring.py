"""Stage 1 of attention: scoring functions.

Each scorer maps queries `q: [..., q_len, d_q]` and keys `k: [..., kv_len, d_k]`
to scores `[..., q_len, kv_len]`; leading axes (batch, heads, ...) broadcast.
A scorer can be passed to `attention(..., score_fn=...)`; scorers with
parameters are bound first, e.g. `functools.partial(additive_scores, params=p)`.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_qk(fn: str, q: jax.Array, k: jax.Array, same_dim: bool = True) -> None:
  C.check_rank(fn, "q", q, "[..., q_len, d_k] (at least 2 axes)", min_rank=2)
  C.check_rank(fn, "k", k, "[..., kv_len, d_k] (at least 2 axes)", min_rank=2)
  C.check_inputs(fn, q=q, k=k)
  if same_dim:
    C.check_axis(fn, "k", k, -1, q.shape[-1],
                 f"[..., kv_len, d_k] with d_k={q.shape[-1]} (the last axis of 'q')")


def dot_product_scores(q: jax.Array, k: jax.Array) -> jax.Array:
  """Plain dot-product scores `q k^T`.

  Args:
    q: [..., q_len, d_k] queries.
    k: [..., kv_len, d_k] keys.

  Returns:
    [..., q_len, kv_len] scores, accumulated in float32 for low-precision inputs.
  """
  _check_qk("dot_product_scores", q, k)
  acc = jnp.promote_types(q.dtype, jnp.float32)
  return jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=acc)


def scaled_dot_product_scores(q: jax.Array, k: jax.Array, scale: float | None = None) -> jax.Array:
  """Scaled dot-product scores `q k^T * scale`, `scale = 1/sqrt(d_k)` by default.

  Dividing by sqrt(d_k) keeps the variance of the scores at ~1 for unit-variance
  inputs, so the softmax does not saturate as d_k grows.

  Args:
    q: [..., q_len, d_k] queries.
    k: [..., kv_len, d_k] keys.
    scale: multiplier for the scores; None means 1/sqrt(d_k).

  Returns:
    [..., q_len, kv_len] scores (float32 for bf16/f16 inputs).
  """
  _check_qk("scaled_dot_product_scores", q, k)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  # Scale q rather than the scores: q_len*d multiplies instead of q_len*kv_len.
  return dot_product_scores(q * jnp.asarray(scale, q.dtype), k)


def init_additive_params(key: jax.Array, d_q: int, d_k: int, hidden: int,
                         dtype=jnp.float32) -> dict[str, jax.Array]:
  """Parameters for `additive_scores`: {'W_q': [d_q, hidden], 'W_k': [d_k, hidden], 'v': [hidden]}.

  Glorot-uniform matrices (as torch/flax Dense with xavier), uniform `v`.

  Args:
    key: PRNG key.
    d_q: query width.
    d_k: key width.
    hidden: width of the hidden tanh layer.
    dtype: parameter dtype.

  Returns:
    {'W_q': [d_q, hidden], 'W_k': [d_k, hidden], 'v': [hidden]}.
  """
  kq, kk, kv = jax.random.split(key, 3)
  glorot = jax.nn.initializers.glorot_uniform()
  bound = 1.0 / math.sqrt(hidden)
  return {
      "W_q": glorot(kq, (d_q, hidden), dtype),
      "W_k": glorot(kk, (d_k, hidden), dtype),
      "v": jax.random.uniform(kv, (hidden,), dtype, -bound, bound),
  }


def additive_scores(q: jax.Array, k: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
  """Additive (Bahdanau) scores `v^T tanh(W_q q + W_k k)`.

  Queries and keys may have different widths. Memory is O(q_len * kv_len * hidden).
  Without 'W_k' in `params` the keys are taken as already projected (`k = keys @ W_k`,
  width `hidden`): a decoder that scores the same keys at every step projects them once.

  Args:
    q: [..., q_len, d_q] queries.
    k: [..., kv_len, d_k] keys, or [..., kv_len, hidden] projected keys when 'W_k' is absent.
    params: {'W_q': [d_q, hidden], 'W_k': [d_k, hidden] (optional), 'v': [hidden]}
      (see `init_additive_params`).

  Returns:
    [..., q_len, kv_len] scores.
  """
  fn = "additive_scores"
  _check_qk(fn, q, k, same_dim=False)
  for name in ("W_q", "v"):
    if name not in params:
      raise C.ShapeError(f"{fn}(): 'params' has no '{name}' (keys: {sorted(params)}).")
  w_q, v = params["W_q"], params["v"]
  C.check_rank(fn, "params['v']", v, "[hidden]", rank=1)
  hidden = v.shape[0]
  C.check_rank(fn, "params['W_q']", w_q, f"[d_q={q.shape[-1]}, hidden={hidden}]", rank=2)
  if w_q.shape != (q.shape[-1], hidden):
    C.fail(fn, "params['W_q']", w_q, f"[d_q={q.shape[-1]}, hidden={hidden}]")
  if "W_k" in params:
    w_k = params["W_k"]
    C.check_rank(fn, "params['W_k']", w_k, f"[d_k={k.shape[-1]}, hidden={hidden}]", rank=2)
    if w_k.shape != (k.shape[-1], hidden):
      C.fail(fn, "params['W_k']", w_k, f"[d_k={k.shape[-1]}, hidden={hidden}]")
    fk = k @ w_k                              # [..., kv_len, hidden]
  elif k.shape[-1] != hidden:
    C.fail(fn, "k", k, f"[..., kv_len, hidden={hidden}] (projected keys: params has no 'W_k')")
  else:
    fk = k
  fq = q @ w_q                                # [..., q_len, hidden]
  feats = jnp.tanh(fq[..., :, None, :] + fk[..., None, :, :])  # [..., q, kv, hidden]
  return feats @ v


def cosine_scores(q: jax.Array, k: jax.Array, temperature: float = 1.0,
                  eps: float = 1e-6) -> jax.Array:
  """Cosine-similarity scores `cos(q, k) / temperature`.

  Invariant to rescaling `q` or `k` by a positive factor.

  Args:
    q: [..., q_len, d_k] queries.
    k: [..., kv_len, d_k] keys.
    temperature: divides the cosine; smaller values sharpen the softmax.
    eps: guards the norm of an all-zero vector.

  Returns:
    [..., q_len, kv_len] scores in [-1/temperature, 1/temperature].
  """
  _check_qk("cosine_scores", q, k)
  C.check_positive("cosine_scores", "temperature", temperature)
  acc = jnp.promote_types(q.dtype, jnp.float32)
  qn = q.astype(acc)
  kn = k.astype(acc)
  qn = qn / jnp.maximum(jnp.linalg.norm(qn, axis=-1, keepdims=True), eps)
  kn = kn / jnp.maximum(jnp.linalg.norm(kn, axis=-1, keepdims=True), eps)
  return dot_product_scores(qn, kn) / temperature


def gaussian_kernel_scores(q: jax.Array, k: jax.Array, bandwidth: float = 1.0) -> jax.Array:
  """Gaussian-kernel scores `-||q - k||^2 / (2 * bandwidth^2)` (Nadaraya-Watson).

  The softmax of these scores is the normalised Gaussian kernel weight.

  Args:
    q: [..., q_len, d] query locations.
    k: [..., kv_len, d] key locations.
    bandwidth: kernel width sigma (> 0).

  Returns:
    [..., q_len, kv_len] scores (<= 0).
  """
  _check_qk("gaussian_kernel_scores", q, k)
  C.check_positive("gaussian_kernel_scores", "bandwidth", bandwidth)
  diff = q[..., :, None, :] - k[..., None, :, :]
  return -jnp.sum(diff * diff, axis=-1) / (2.0 * bandwidth ** 2)
