"""Blockwise (flash-style) attention: O(N) memory in the forward and the backward pass.

The forward pass tiles queries into blocks of `block_q` rows and walks the key
blocks of `block_k` columns with an online softmax (running row max `m` and
row sum `l`, float32 accumulators), so the `[q_len, kv_len]` score matrix is
never materialised. It saves only the output and the per-row logsumexp.
The backward pass (`jax.custom_vjp`, FlashAttention-2) recomputes each score
tile from q, k and the saved logsumexp, so it is O(N) in memory as well.

Causal attention skips the tiles above the diagonal (the loops do not visit
them) and masks only the tiles that straddle it. Lengths that are not a
multiple of the tile size are padded and the padded keys masked.

Reverse mode only: the custom VJP has no JVP rule, so `jax.jvp`/`jax.jacfwd`
need `attention(..., implementation='reference')`.

Layout as `attention`: `q: [..., q_len, d_k]`, `k: [..., kv_len, d_k]`,
`v: [..., kv_len, d_v]`, leading axes broadcast. Pure jnp/lax, no Flax.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax.functional import _checks as C
from attn_jax.functional import masks as M
from attn_jax.functional.tiles import default_blocks, divisor_at_most, group_rows


class _Cfg(NamedTuple):
  """Static configuration of one call (hashable: a nondiff argument of the custom VJP)."""
  block_q: int
  block_k: int
  block_q_bwd: int  # divides block_q
  block_k_bwd: int  # divides block_k
  q_len: int      # unpadded lengths
  kv_len: int
  causal: bool
  scale: float
  lead: tuple[int, ...]  # the broadcast leading axes that Z flattens
  group: int      # the inference forward runs Z rows as independent kernels of this many


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                        scale: float | None = None,
                        mask: jax.Array | None = None,
                        bias: jax.Array | None = None,
                        valid_lens: jax.Array | None = None,
                        is_causal: bool = False,
                        block_q: int | None = None,
                        block_k: int | None = None,
                        block_q_bwd: int | None = None,
                        block_k_bwd: int | None = None,
                        group_size: int | None = None) -> jax.Array:
  """Scaled dot-product attention computed tile by tile (flash attention).

  Same semantics as `attention(..., implementation='reference')` with the default
  scorer: rows with no valid key output zeros (with zero gradient).

  Args:
    q: [..., q_len, d_k] queries; k: [..., kv_len, d_k]; v: [..., kv_len, d_v].
    scale: score scale (default 1/sqrt(d_k)).
    mask: bool, broadcastable to [..., q_len, kv_len]; True = may attend.
    bias: additive, broadcastable to [..., q_len, kv_len]; differentiable (its
      gradient is reduced over the axes it was broadcast along).
    valid_lens: scalar, [batch] or [batch, q_len] number of valid keys.
    is_causal: query i sees keys j <= i + kv_len - q_len (aligned at the end).
    block_q, block_k: forward tile sizes (default `default_blocks`); clipped to the
      lengths.
    block_q_bwd, block_k_bwd: backward tile sizes (default `default_blocks`); they must
      divide block_q / block_k. `python -m experiments.tune_blocks` measures tile sizes.
    group_size: without gradients, the forward runs the Z = prod(leading axes) rows as
      independent kernels of this many rows each (default `tiles.group_rows`; one kernel
      when a mask or bias is given). Under `jax.grad` all rows run at once.
  Returns:
    [..., q_len, d_v] in q's dtype. Scores, softmax and accumulation run in float32.
  """
  fn = "blockwise_attention"
  C.check_rank(fn, "q", q, "[..., q_len, d_k] (at least 2 axes)", min_rank=2)
  C.check_rank(fn, "k", k, "[..., kv_len, d_k] (at least 2 axes)", min_rank=2)
  C.check_rank(fn, "v", v, "[..., kv_len, d_v] (at least 2 axes)", min_rank=2)
  C.check_inputs(fn, q=q, k=k, v=v)
  if valid_lens is not None:
    C.check_integer(fn, "valid_lens", valid_lens)
  C.check_axis(fn, "k", k, -1, q.shape[-1], f"[..., kv_len, d_k] with d_k={q.shape[-1]}")
  C.check_axis(fn, "v", v, -2, k.shape[-2], f"[..., kv_len, d_v] with kv_len={k.shape[-2]}")
  lead = tuple(jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
  nq, nk = q.shape[-2], k.shape[-2]
  shape = lead + (nq, nk)
  for name, x in (("mask", mask), ("bias", bias)):
    if x is not None:
      C.check_broadcastable(fn, name, x, shape, "[..., q_len, kv_len]")
  z = math.prod(lead)
  # The inference forward runs independent groups of rows (tiles.group_rows); a mask or
  # bias keeps one group (its broadcast axes are not split along Z).
  g = group_rows(z, bool(is_causal), nq) if group_size is None else max(1, min(group_size, z))
  g = z if mask is not None or bias is not None else g
  d_bq, d_bk, d_bqb, d_bkb = default_blocks(z, bool(is_causal), q_len=nq, kv_len=nk)
  bq = max(1, min(block_q or d_bq, nq))
  bk = max(1, min(block_k or d_bk, nk))
  # Backward tiles must split the forward's evenly; defaults fall back to a divisor.
  bqb = min(block_q_bwd, bq) if block_q_bwd else divisor_at_most(bq, d_bqb)
  bkb = min(block_k_bwd, bk) if block_k_bwd else divisor_at_most(bk, d_bkb)
  for name, small, big, big_name in (("block_q_bwd", bqb, bq, "block_q"),
                                     ("block_k_bwd", bkb, bk, "block_k")):
    if big % small:
      raise ValueError(f"{fn}(): argument '{name}'={small} must divide {big_name}={big} "
                       "(after clipping to the sequence length).")
  nq_p, nk_p = -(-nq // bq) * bq, -(-nk // bk) * bk
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  cfg = _Cfg(bq, bk, bqb, bkb, nq, nk, bool(is_causal), scale, lead, g)

  def flat(x, n_p):  # [..., n, d] -> [Z, n_p, d], zero-padded along n
    x = jnp.broadcast_to(x, lead + x.shape[-2:]).reshape((-1,) + x.shape[-2:])
    return jnp.pad(x, ((0, 0), (0, n_p - x.shape[1]), (0, 0)))

  lens = None
  if valid_lens is not None:
    lens = jnp.broadcast_to(_lens_for_rows(valid_lens, shape, fn), lead + (nq,))
    lens = jnp.minimum(lens.reshape(-1, nq), nk).astype(jnp.int32)
  elif nk_p > nk:
    lens = jnp.full((1, nq), nk, jnp.int32)  # masks the padded keys
  if lens is not None:
    lens = jnp.pad(lens, ((0, 0), (0, nq_p - nq)), constant_values=nk)
  mask = None if mask is None else _pairwise(jnp.asarray(mask, bool), shape, nq_p, nk_p)
  bias = None if bias is None else _pairwise(bias, shape, nq_p, nk_p)
  out = _kernel(cfg, flat(q, nq_p), flat(k, nk_p), flat(v, nk_p), mask, bias, lens)
  return out[:, :nq].reshape(lead + (nq, v.shape[-1])).astype(q.dtype)


def _lens_for_rows(valid_lens, shape, fn) -> jax.Array:
  """valid_lens (scalar, [batch], [batch, q_len]) -> an array broadcastable to shape[:-1]."""
  M.valid_lens_mask(valid_lens, shape, fn)  # validates; its result is unused (DCE'd under jit)
  vl = jnp.asarray(valid_lens)
  nd = len(shape)
  if vl.ndim == 0:
    return vl
  if vl.ndim == 1:
    return vl.reshape((-1,) + (1,) * (nd - 2))
  return vl.reshape((vl.shape[0],) + (1,) * (nd - 3) + (vl.shape[1],))


def _pairwise(x, shape, nq_p, nk_p) -> jax.Array:
  """A mask/bias broadcastable to `shape`: full rank, padded along its non-1 q/kv axes."""
  x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
  pq = nq_p - x.shape[-2] if x.shape[-2] > 1 else 0
  pk = nk_p - x.shape[-1] if x.shape[-1] > 1 else 0
  return jnp.pad(x, ((0, 0),) * (x.ndim - 2) + ((0, pq), (0, pk)))


def _tile(x, lead, qi, ki, bq, bk):
  """The [Z or 1, bq or 1, bk or 1] tile of a pairwise array at rows qi.., cols ki.."""
  xl, (xq, xk) = x.shape[:-2], x.shape[-2:]
  sq, sk = (bq if xq > 1 else 1), (bk if xk > 1 else 1)
  t = lax.dynamic_slice(x, (0,) * len(xl) + (qi if xq > 1 else 0, ki if xk > 1 else 0),
                        xl + (sq, sk))
  if all(d == 1 for d in xl):
    return t.reshape(1, sq, sk)
  return jnp.broadcast_to(t, lead + (sq, sk)).reshape(-1, sq, sk)


def _untile(t, x_shape, lead):
  """Inverse of `_tile` for gradients: sum a [Z, bq, bk] tile over x's broadcast axes."""
  xl, (xq, xk) = x_shape[:-2], x_shape[-2:]
  t = t.reshape(lead + t.shape[-2:]) if lead else t[0]
  axes = tuple(i for i, d in enumerate(xl) if d == 1) + \
      tuple(len(xl) + i for i, d in enumerate((xq, xk)) if d == 1)
  return jnp.sum(t, axis=axes, keepdims=True)


def _scaled(q, scale):
  """q * scale in q's dtype: O(N d) multiplies instead of O(N^2) on the scores. Forward
  and backward both score with this same array, so the saved logsumexp matches."""
  return q * jnp.asarray(scale, q.dtype)


def _scores(cfg, qt, kt, qi, ki, mask, bias, lens, diag):
  """Score tile [Z, bq, bk] in float32 (qt already scaled) with -inf at blocked keys."""
  s = jnp.einsum("zqd,zkd->zqk", qt, kt, preferred_element_type=jnp.float32)
  if bias is not None:
    s = s + _tile(bias, cfg.lead, qi, ki, cfg.block_q, cfg.block_k).astype(jnp.float32)
  keep = None
  cols = ki + lax.broadcasted_iota(jnp.int32, (1, 1, cfg.block_k), 2)
  if lens is not None:
    keep = cols < lax.dynamic_slice_in_dim(lens, qi, cfg.block_q, axis=1)[..., None]
  if mask is not None:
    m = _tile(mask, cfg.lead, qi, ki, cfg.block_q, cfg.block_k)
    keep = m if keep is None else keep & m
  if diag:  # causal, only on tiles that straddle the diagonal
    rows = qi + lax.broadcasted_iota(jnp.int32, (1, cfg.block_q, 1), 1)
    c = rows + (cfg.kv_len - cfg.q_len) >= cols
    if _causal_only(cfg, mask, lens):  # then keep is None
      # A [1, bq, bk] additive -inf bias instead of a select on the [Z, bq, bk] scores:
      # XLA:CPU keeps an add inside the fused matmul-softmax-matmul kernel.
      return s + jnp.where(c, 0.0, -jnp.inf)
    keep = c if keep is None else keep & c
  return s if keep is None else jnp.where(keep, s, -jnp.inf)


def _causal_only(cfg, mask, lens) -> bool:
  """Causal with no other mask and every query seeing key 0 (kv_len >= q_len): key tile 0,
  which every loop visits first, then gives each row a finite max, so later -inf scores
  only ever give exp(-inf) = 0 and the softmax needs no NaN guard."""
  return cfg.causal and mask is None and lens is None and cfg.kv_len >= cfg.q_len


def _may_block(cfg, mask, lens, diag) -> bool:
  """Whether a row's running max can be -inf (then it needs the NaN-safe softmax).
  Without that the plain form stays free of selects, which XLA:CPU fuses into one kernel
  with the two matmuls (a select splits it into separate passes over the tile)."""
  return mask is not None or lens is not None or (bool(diag) and not _causal_only(cfg, mask, lens))


def _k_range(cfg, qi, n_kb):
  """Key tiles [0, full) need no causal mask, [full, hi) straddle the diagonal."""
  if not cfg.causal:
    return n_kb, n_kb
  off = cfg.kv_len - cfg.q_len
  full = jnp.clip((qi + off + 1) // cfg.block_k, 0, n_kb)
  hi = jnp.clip((qi + cfg.block_q - 1 + off) // cfg.block_k + 1, 0, n_kb)
  return full, hi


def _q_range(cfg, ki, n_qb):
  """Query tiles that see key tile `ki`: [lo, full) straddle the diagonal, [full, n) don't."""
  if not cfg.causal:
    return 0, 0, n_qb
  off = cfg.kv_len - cfg.q_len
  lo = jnp.clip(jnp.maximum(ki - off, 0) // cfg.block_q, 0, n_qb)
  full = jnp.clip(-(-(ki + cfg.block_k - 1 - off) // cfg.block_q), lo, n_qb)
  return lo, full, n_qb


def _static(x) -> int | None:
  """x as a Python int when it is known at trace time (not a tracer), else None."""
  try:
    return int(x)
  except (jax.errors.ConcretizationTypeError, TypeError):
    return None


def _loop(lo, hi, body, carry):
  """`lax.fori_loop`, but a trip count of 0 or 1 known at trace time runs without a
  loop: a single tile (short sequences) then costs what the dense computation does."""
  slo, shi = _static(lo), _static(hi)
  if slo is not None and shi is not None and shi - slo <= 1:
    return carry if shi <= slo else body(slo, carry)
  return lax.fori_loop(lo, hi, body, carry)


def _scan(f, init, n: int):
  """`lax.scan(f, init, arange(n))`; n == 1 calls f once (static index 0, no loop)."""
  if n == 1:
    carry, ys = f(init, 0)
    return carry, jax.tree.map(lambda y: y[None], ys)
  return lax.scan(f, init, jnp.arange(n))


def _forward(cfg, q, k, v, mask, bias, lens):
  """Returns out [Z, nq_p, d_v] (float32) and the row logsumexp [Z, nq_p]."""
  z, bq, bk = q.shape[0], cfg.block_q, cfg.block_k
  q = _scaled(q, cfg.scale)
  n_kb = k.shape[1] // bk

  def q_block(i):
    qi = i * bq
    qt = lax.dynamic_slice_in_dim(q, qi, bq, axis=1)

    def step(diag, j, carry):
      m, l, acc = carry
      ki = j * bk
      kt = lax.dynamic_slice_in_dim(k, ki, bk, axis=1)
      vt = lax.dynamic_slice_in_dim(v, ki, bk, axis=1)
      s = _scores(cfg, qt, kt, qi, ki, mask, bias, lens, diag)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      m_safe = m_new  # finite unless masks can block a whole row so far:
      if _may_block(cfg, mask, lens, diag):
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # then no NaN
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      l = l * alpha + jnp.sum(p, axis=-1)
      pv = jnp.einsum("zqk,zkd->zqd", p.astype(v.dtype), vt, preferred_element_type=jnp.float32)
      return m_new, l, acc * alpha[..., None] + pv

    full, hi = _k_range(cfg, qi, n_kb)
    if _static(hi) == 1:  # one key tile: the dense softmax, normalised before the second
      # matmul (XLA:CPU runs that form ~1.4x faster than scaling the matmul's output)
      diag = _static(full) == 0
      s = _scores(cfg, qt, k[:, :bk], qi, 0, mask, bias, lens, diag)
      m = jnp.max(s, axis=-1)
      if _may_block(cfg, mask, lens, diag):
        p = jnp.exp(s - jnp.where(m == -jnp.inf, 0.0, m)[..., None])
        l = jnp.sum(p, axis=-1)
        l_safe = jnp.where(l > 0, l, 1.0)
      else:
        p = jnp.exp(s - m[..., None])
        l = l_safe = jnp.sum(p, axis=-1)
      out = jnp.einsum("zqk,zkd->zqd", (p / l_safe[..., None]).astype(v.dtype), v[:, :bk],
                       preferred_element_type=jnp.float32)
    else:
      init = (jnp.full((z, bq), -jnp.inf, jnp.float32), jnp.zeros((z, bq), jnp.float32),
              jnp.zeros((z, bq, v.shape[-1]), jnp.float32))
      carry = _loop(0, full, functools.partial(step, False), init)
      m, l, acc = _loop(full, hi, functools.partial(step, True), carry)
      l_safe = jnp.where(l > 0, l, 1.0)
      out = acc / l_safe[..., None]  # rows with no valid key: 0
    lse = jnp.where(l > 0, m + jnp.log(l_safe), jnp.inf)
    return out, lse

  _, (outs, lses) = _scan(lambda c, i: (c, q_block(i)), None, q.shape[1] // bq)
  out = jnp.moveaxis(outs, 0, 1).reshape(z, -1, v.shape[-1])
  return out, jnp.moveaxis(lses, 0, 1).reshape(z, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, mask, bias, lens):
  """out [Z, nq_p, d_v] float32 for padded, flattened q [Z, nq_p, d], k/v [Z, nk_p, d].

  Without gradients: `_forward` over independent groups of `cfg.group` rows (mask and bias
  are None when there are several), kernels that XLA:CPU fuses and schedules on their own.
  """
  g = cfg.group
  if g >= q.shape[0]:
    return _forward(cfg, q, k, v, mask, bias, lens)[0]
  rows = lambda x, s: x if x is None or x.shape[0] == 1 else x[s:s + g]
  return jnp.concatenate([_forward(cfg, q[s:s + g], k[s:s + g], v[s:s + g], mask, bias,
                                   rows(lens, s))[0] for s in range(0, q.shape[0], g)])


def _flash_fwd(cfg, q, k, v, mask, bias, lens):
  # With gradients: all rows at once (grouping measured slower for forward+backward).
  out, lse = _forward(cfg, q, k, v, mask, bias, lens)
  return out, (q, k, v, mask, bias, lens, out, lse)


def _flash_bwd(cfg, res, d_out):
  """FlashAttention-2 backward: per key tile, walk the query tiles that see it.

  dV += P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dO * O));  dQ += dS K;  dK += dS^T Q.
  P is recomputed from the saved logsumexp; dQ (O(N)) is updated in place.
  """
  q, k, v, mask, bias, lens, out, lse = res
  cfg = cfg._replace(block_q=cfg.block_q_bwd, block_k=cfg.block_k_bwd)  # 4 score temporaries
  z, bq, bk = q.shape[0], cfg.block_q, cfg.block_k
  n_qb = q.shape[1] // bq
  q = _scaled(q, cfg.scale)  # so dK = dS^T (scale Q) needs no further scaling
  d_out = d_out.astype(jnp.float32)
  delta = jnp.sum(d_out * out, axis=-1)  # [Z, nq_p]
  dtype = v.dtype

  def k_block(carry, j):
    dq, dbias = carry
    ki = j * bk
    kt = lax.dynamic_slice_in_dim(k, ki, bk, axis=1)
    vt = lax.dynamic_slice_in_dim(v, ki, bk, axis=1)

    def step(diag, i, c):
      dq, dbias, dk, dv = c
      qi = i * bq
      qt = lax.dynamic_slice_in_dim(q, qi, bq, axis=1)
      dot = lax.dynamic_slice_in_dim(d_out, qi, bq, axis=1)
      s = _scores(cfg, qt, kt, qi, ki, mask, bias, lens, diag)
      p = jnp.exp(s - lax.dynamic_slice_in_dim(lse, qi, bq, axis=1)[..., None])
      dv = dv + jnp.einsum("zqk,zqd->zkd", p.astype(dtype), dot.astype(dtype),
                           preferred_element_type=jnp.float32)
      dp = jnp.einsum("zqd,zkd->zqk", dot.astype(dtype), vt, preferred_element_type=jnp.float32)
      ds = p * (dp - lax.dynamic_slice_in_dim(delta, qi, bq, axis=1)[..., None])
      dsc = ds.astype(dtype)
      dq_t = jnp.einsum("zqk,zkd->zqd", dsc, kt, preferred_element_type=jnp.float32)
      dq = lax.dynamic_update_slice_in_dim(
          dq, lax.dynamic_slice_in_dim(dq, qi, bq, axis=1) + dq_t, qi, axis=1)
      dk = dk + jnp.einsum("zqk,zqd->zkd", dsc, qt, preferred_element_type=jnp.float32)
      if bias is not None:
        dbias = _add_tile(dbias, _untile(ds, bias.shape, cfg.lead), qi, ki)
      return dq, dbias, dk, dv

    c = (dq, dbias, jnp.zeros((z, bk, k.shape[-1]), jnp.float32),
         jnp.zeros((z, bk, v.shape[-1]), jnp.float32))
    lo, full, hi = _q_range(cfg, ki, n_qb)
    c = _loop(lo, full, functools.partial(step, True), c)
    dq, dbias, dk, dv = _loop(full, hi, functools.partial(step, False), c)
    return (dq, dbias), (dk, dv)

  dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  (dq, dbias), (dk, dv) = _scan(k_block, (jnp.zeros(q.shape, jnp.float32), dbias0),
                                 k.shape[1] // bk)
  dk = jnp.moveaxis(dk, 0, 1).reshape(k.shape)
  dv = jnp.moveaxis(dv, 0, 1).reshape(v.shape)
  dbias = None if bias is None else dbias.astype(bias.dtype)
  return ((dq * cfg.scale).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          None, dbias, None)


def _add_tile(buf, t, qi, ki):
  """buf[..., qi:qi+bq, ki:ki+bk] += t, where t's pair axes of size 1 stay at 0."""
  starts = (0,) * (buf.ndim - 2) + (qi if buf.shape[-2] > 1 else 0, ki if buf.shape[-1] > 1 else 0)
  return lax.dynamic_update_slice(buf, lax.dynamic_slice(buf, starts, t.shape) + t, starts)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _blockwise_kernel(cfg, q, k, v, mask, bias, lens):
  return _flash(cfg, q, k, v, mask, bias, lens)


# The kernel as one named, jitted call (inlined into the caller's program): its name stays in
# the jaxpr of a model's training step, also under jax.grad, so tests can see which path ran.
_kernel = jax.jit(_blockwise_kernel, static_argnums=0)
