"""Multi-head attention as a pure function of a plain parameter pytree.

Parameters (see `init_multi_head_params`)::

    {'W_q': [d_q, heads * head_dim],  'b_q': [heads * head_dim],
     'W_k': [d_k, kv_heads * head_dim],  'b_k': [kv_heads * head_dim],
     'W_v': [d_v, kv_heads * v_head_dim], 'b_v': [kv_heads * v_head_dim],
     'W_o': [heads * v_head_dim, d_out], 'b_o': [d_out]}

`kv_heads` = heads, or fewer that divide them (grouped-query attention; 1: multi-query).

Biases are optional (absent keys mean no bias). Query, key and value inputs may
all have different widths, as with torch's `MultiheadAttention(kdim=, vdim=)`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C
from attn_jax.functional import core as A

Params = dict[str, jax.Array]
VARIANTS = {"window", "q_segment_ids", "kv_segment_ids", "softcap", "alibi_slopes"}


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[..., len, heads * head_dim] -> [..., heads, len, head_dim]."""
  C.check_rank("split_heads", "x", x, "[..., len, heads * head_dim]", min_rank=2)
  _check_heads("split_heads", num_heads)
  if x.shape[-1] % num_heads:
    C.fail("split_heads", "x", x,
           f"[..., len, features] with features divisible by num_heads={num_heads}")
  x = x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))
  return jnp.swapaxes(x, -2, -3)


def merge_heads(x: jax.Array) -> jax.Array:
  """[..., heads, len, head_dim] -> [..., len, heads * head_dim]."""
  C.check_rank("merge_heads", "x", x, "[..., heads, len, head_dim]", min_rank=3)
  x = jnp.swapaxes(x, -2, -3)
  return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
  """`x @ w + b`.

  Args:
    x: [..., d_in].
    w: [d_in, d_out].
    b: [d_out] or None.

  Returns:
    [..., d_out].
  """
  y = x @ w
  return y if b is None else y + b


def project_heads(x: jax.Array, w: jax.Array, b: jax.Array | None, num_heads: int) -> jax.Array:
  """Input projection then head split: [..., len, d_in] -> [..., heads, len, features/heads]."""
  return split_heads(linear(x, w, b), num_heads)


def project_out(o: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
  """Head merge then output projection: [..., heads, len, d_head] -> [..., len, d_out]."""
  return linear(merge_heads(o), w, b)


def init_multi_head_params(key: jax.Array, d_q: int, num_heads: int, head_dim: int, *,
                           d_k: int | None = None, d_v: int | None = None,
                           v_head_dim: int | None = None, d_out: int | None = None,
                           num_kv_heads: int | None = None, use_bias: bool = True,
                           dtype=jnp.float32) -> Params:
  """Glorot-uniform weights and zero biases for `multi_head_attention`.

  Args:
    key: PRNG key.
    d_q: width of the query input.
    num_heads: number of heads.
    head_dim: per-head query/key width.
    d_k: width of the key input (default d_q).
    d_v: width of the value input (default d_k).
    v_head_dim: per-head value width (default head_dim).
    d_out: output width (default d_q).
    num_kv_heads: key/value heads (default num_heads; fewer, dividing it: GQA/MQA).
    use_bias: also create the zero biases `b_q, b_k, b_v, b_o`.
    dtype: parameter dtype.

  Returns:
    {'W_q': [d_q, heads * head_dim], 'W_k': [d_k, kv_heads * head_dim],
    'W_v': [d_v, kv_heads * v_head_dim], 'W_o': [heads * v_head_dim, d_out]} and, with
    `use_bias`, zero biases 'b_q', 'b_k', 'b_v', 'b_o' of the columns' sizes.
  """
  kv = _kv_heads("init_multi_head_params", num_heads, num_kv_heads)
  d_k = d_q if d_k is None else d_k
  d_v = d_k if d_v is None else d_v
  v_head_dim = head_dim if v_head_dim is None else v_head_dim
  d_out = d_q if d_out is None else d_out
  glorot = jax.nn.initializers.glorot_uniform()
  keys = jax.random.split(key, 4)
  shapes = {"q": (d_q, num_heads * head_dim), "k": (d_k, kv * head_dim),
            "v": (d_v, kv * v_head_dim), "o": (num_heads * v_head_dim, d_out)}
  params = {}
  for kk, (name, shape) in zip(keys, shapes.items()):
    params[f"W_{name}"] = glorot(kk, shape, dtype)
    if use_bias:
      params[f"b_{name}"] = jnp.zeros((shape[1],), dtype)
  return params


def _check_heads(fn: str, num_heads) -> None:
  if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
    raise C.ShapeError(f"{fn}(): argument 'num_heads' must be a positive int, got "
                       f"{num_heads!r}.")


def _kv_heads(fn: str, num_heads: int, num_kv_heads) -> int:
  _check_heads(fn, num_heads)
  if num_kv_heads is None:
    return num_heads
  if (isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, int) or num_kv_heads < 1
      or num_heads % num_kv_heads):
    raise C.ShapeError(f"{fn}(): argument 'num_kv_heads' must be a positive int dividing "
                       f"num_heads={num_heads}, got {num_kv_heads!r}.")
  return num_kv_heads


class MissingParamError(C.ShapeError, KeyError):
  """A required entry of a params dict is absent (a ShapeError and a KeyError)."""

  def __str__(self) -> str:
    return str(self.args[0])


def _check_params(fn: str, params: Params, x_q, x_k, x_v, num_heads: int, kv: int) -> None:
  for name in ("W_q", "W_k", "W_v", "W_o"):
    if name not in params:
      raise MissingParamError(f"{fn}(): 'params' has no '{name}' (keys: {sorted(params)}).")
  for name in sorted(params):
    C.check_float(fn, f"params['{name}']", params[name])
  for name, x, h in (("W_q", x_q, num_heads), ("W_k", x_k, kv), ("W_v", x_v, kv)):
    w = params[name]
    C.check_rank(fn, f"params['{name}']", w, "[d_in, heads * head_dim]", rank=2)
    C.check_axis(fn, f"params['{name}']", w, 0, x.shape[-1],
                 f"[d_in={x.shape[-1]}, heads * head_dim] matching the input's last axis")
    if w.shape[1] % h:
      C.fail(fn, f"params['{name}']", w, f"[d_in, features] with features divisible by "
             f"{'num_heads' if h == num_heads else 'num_kv_heads'}={h}")
  head_dim = params["W_q"].shape[1] // num_heads
  if params["W_k"].shape[1] != kv * head_dim:
    C.fail(fn, "params['W_k']", params["W_k"],
           f"[d_k, {kv * head_dim}] ({kv} key heads of params['W_q']'s head_dim={head_dim})")
  if params["W_v"].shape[1] % kv:
    C.fail(fn, "params['W_v']", params["W_v"], f"[d_v, {kv} x v_head_dim]")
  v_head_dim = params["W_v"].shape[1] // kv
  C.check_rank(fn, "params['W_o']", params["W_o"], "[heads * v_head_dim, d_out]", rank=2)
  C.check_axis(fn, "params['W_o']", params["W_o"], 0, num_heads * v_head_dim,
               f"[{num_heads * v_head_dim}, d_out] (rows = num_heads x v_head_dim)")
  for b, w in (("b_q", "W_q"), ("b_k", "W_k"), ("b_v", "W_v"), ("b_o", "W_o")):
    if b in params:
      n = params[w].shape[1]
      if tuple(jnp.shape(params[b])) != (n,):
        C.fail(fn, f"params['{b}']", params[b], f"[{n}] (the columns of params['{w}'])")


def multi_head_attention(params: Params, x_q: jax.Array, x_kv: jax.Array, num_heads: int, *,
                         x_v: jax.Array | None = None,
                         mask: jax.Array | None = None,
                         bias: jax.Array | None = None,
                         valid_lens: jax.Array | None = None,
                         is_causal: bool = False,
                         dropout_rate: float = 0.0,
                         dropout_rng: jax.Array | None = None,
                         return_weights: bool = False,
                         implementation: A.Implementation | None = None,
                         num_kv_heads: int | None = None,
                         **variants):
  """Multi-head attention: project, split heads, attend, merge heads, project out.

  Args:
    params: see the module docstring / `init_multi_head_params`.
    x_q: [batch, q_len, d_q] query tokens.
    x_kv: [batch, kv_len, d_k] key tokens (also the values unless `x_v` is given).
      Pass `x_q` for self-attention.
    num_heads: number of heads.
    x_v: optional [batch, kv_len, d_v] value tokens.
    mask: bool broadcastable to [batch, heads, q_len, kv_len] (e.g. `[batch, 1, 1, kv_len]`).
    bias: additive, broadcastable to [batch, heads, q_len, kv_len].
    valid_lens: [batch] or [batch, q_len] valid key counts.
    is_causal: causal mask (as in `attention`).
    dropout_rate: dropout on the attention weights; needs `dropout_rng` when > 0.
    dropout_rng: PRNG key for dropout.
    return_weights: also return weights [batch, heads, q_len, kv_len].
    implementation: passed to `attention` (None: the fastest correct path).
    num_kv_heads: key/value heads of params['W_k'] / ['W_v'] (default num_heads; fewer,
      dividing it: grouped-query attention, never repeated).
    **variants: `window`, `q_segment_ids`, `kv_segment_ids` ([batch, len]), `softcap`,
      `alibi_slopes` ([heads]), passed to `attention`.

  Returns:
    [batch, q_len, d_out], or (out, weights).
  """
  fn = "multi_head_attention"
  x_v = x_kv if x_v is None else x_v
  C.check_rank(fn, "x_q", x_q, "[batch, q_len, d_q]", min_rank=2)
  C.check_rank(fn, "x_kv", x_kv, "[batch, kv_len, d_k]", min_rank=2)
  C.check_rank(fn, "x_v", x_v, "[batch, kv_len, d_v]", min_rank=2)
  C.check_inputs(fn, x_q=x_q, x_kv=x_kv, x_v=x_v)
  C.check_axis(fn, "x_v", x_v, -2, x_kv.shape[-2],
               f"[batch, kv_len={x_kv.shape[-2]}, d_v] (same length as 'x_kv')")
  kv = _kv_heads(fn, num_heads, num_kv_heads)
  unknown = set(variants) - VARIANTS
  if unknown:
    raise TypeError(f"{fn}() got unexpected keyword arguments {sorted(unknown)}; the "
                    f"variants are {sorted(VARIANTS)}.")
  _check_params(fn, params, x_q, x_kv, x_v, num_heads, kv)
  q = project_heads(x_q, params["W_q"], params.get("b_q"), num_heads)
  k = project_heads(x_kv, params["W_k"], params.get("b_k"), kv)
  v = project_heads(x_v, params["W_v"], params.get("b_v"), kv)
  res = A.attention(q, k, v, mask=mask, bias=bias, valid_lens=valid_lens, is_causal=is_causal,
                    dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                    return_weights=return_weights, implementation=implementation, **variants)
  out, weights = res if return_weights else (res, None)
  out = project_out(out, params["W_o"], params.get("b_o"))
  return (out, weights) if return_weights else out

