"""Blockwise (flash-style) attention: O(N) memory in the forward and the backward pass.

The forward pass tiles queries into blocks of `block_q` rows and walks the key
blocks of `block_k` columns with an online softmax (running row max `m` and
row sum `l`, float32 accumulators), so the `[q_len, kv_len]` score matrix is
never materialised. It saves only the output and the per-row logsumexp.
The backward pass (`jax.custom_vjp`, FlashAttention-2) recomputes each score
tile from q, k and the saved logsumexp, so it is O(N) in memory as well.

Causal attention and sliding windows skip the tiles outside the band (the loops do
not visit them) and mask only the tiles that straddle its edges, so a window costs
O(N * window). Grouped K/V heads (GQA / MQA) run as [Z, G, ...] query tiles against
[Z, ...] K/V tiles: K/V are never repeated. Segment ids, soft-capping and ALiBi are
applied per tile (`_tile_masks.scores`). Lengths that are not a multiple of the tile
size are padded and the padded keys masked.

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
from attn_jax.functional import _tile_masks as T
from attn_jax.functional import _variants as V
from attn_jax.functional.tiles import default_blocks, divisor_at_most, group_rows, window_cap


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
  lead: tuple[int, ...]  # the broadcast K/V leading axes that Z flattens
  group: int      # the inference forward runs Z rows as independent kernels of this many
  window: V.Window | None = None  # (left, right), see `_variants`
  softcap: float | None = None
  heads: int = 1  # G: query heads per K/V head


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
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
                        block_q: int | None = None,
                        block_k: int | None = None,
                        block_q_bwd: int | None = None,
                        block_k_bwd: int | None = None,
                        group_size: int | None = None) -> jax.Array:
  """Scaled dot-product attention computed tile by tile (flash attention).

  Same semantics as `attention(..., implementation='reference')` with the default
  scorer: rows with no valid key output zeros (with zero gradient).

  Args:
    q: [..., heads, q_len, d_k] queries.
    k: [..., kv_heads, kv_len, d_k] keys; kv_heads divides heads (GQA; 1: MQA).
    v: [..., kv_heads, kv_len, d_v] values.
    scale: score scale (default 1/sqrt(d_k)).
    mask: bool, broadcastable to [..., heads, q_len, kv_len]; True = may attend.
    bias: additive, broadcastable to [..., heads, q_len, kv_len]; differentiable (its
      gradient is reduced over the axes it was broadcast along).
    valid_lens: scalar, [batch] or [batch, q_len] number of valid keys.
    is_causal: query i sees keys j <= i + kv_len - q_len (aligned at the end).
    window: (left, right) sliding window around each query's position (None: unbounded
      side; an int w: (w, w)); tiles outside it are not visited.
    q_segment_ids: [q_len] or [batch, q_len] integer ids (packed sequences); a query
      sees only keys with its id.
    kv_segment_ids: [kv_len] or [batch, kv_len] (default: q_segment_ids when
      q_len == kv_len).
    softcap: `softcap * tanh(s / softcap)` on the scaled scores (before bias and masks).
    alibi_slopes: [heads] (or broadcastable to the leading axes) ALiBi slopes; adds
      `-slope * |i + kv_len - q_len - j|`, computed per tile. Not differentiated.
    block_q: forward query tile (default `tiles.default_blocks`, capped by
      `tiles.window_cap` for a bounded window); clipped to q_len.
    block_k: forward key tile (default and cap as block_q); clipped to kv_len.
    block_q_bwd: backward query tile (default `tiles.default_blocks`); must divide
      block_q. `python -m experiments.tune_blocks` measures tile sizes.
    block_k_bwd: backward key tile; must divide block_k.
    group_size: without gradients, the forward runs the Z = prod(K/V leading axes) rows as
      independent kernels of this many rows each (default `tiles.group_rows`; one kernel
      when a mask or bias is given). Under `jax.grad` all rows run at once.

  Returns:
    [..., heads, q_len, d_v] in q's dtype. Scores, softmax and accumulation run in float32.
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
  lead, groups = V.head_groups(fn, q, k, v)
  nq, nk = q.shape[-2], k.shape[-2]
  shape = lead + (nq, nk)
  for name, x in (("mask", mask), ("bias", bias)):
    if x is not None:
      C.check_broadcastable(fn, name, x, shape, "[..., q_len, kv_len]")
  var = V.check_variants(fn, shape, window=window, q_segment_ids=q_segment_ids,
                         kv_segment_ids=kv_segment_ids, softcap=softcap,
                         alibi_slopes=alibi_slopes)
  zlead, n = V.kv_lead(lead, groups), len(lead)
  z = math.prod(zlead)
  causal = bool(is_causal)
  # The inference forward runs independent groups of rows (tiles.group_rows); a mask or
  # bias keeps one group (its broadcast axes are not split along Z).
  g = max(1, group_rows(z * groups, causal, nq) // groups) if group_size is None else \
      max(1, min(group_size, z))
  g = z if mask is not None or bias is not None else g
  d_bq, d_bk, d_bqb, d_bkb = default_blocks(z * groups, causal, q_len=nq, kv_len=nk)
  band = V.band(var.window, causal)
  if band is not None and None not in band:  # a bounded window: tiles about its width
    cap = window_cap(band[0] + band[1] + 1)
    d_bq, d_bk, d_bqb, d_bkb = (min(b, cap) for b in (d_bq, d_bk, d_bqb, d_bkb))
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
  cfg = _Cfg(bq, bk, bqb, bkb, nq, nk, causal, scale, zlead, g, var.window, var.softcap,
             groups)

  def pad_len(x, axis, n_p, value=0):  # zero-pad axis `axis` of x to n_p
    width = [(0, 0)] * x.ndim
    width[axis] = (0, n_p - x.shape[axis])
    return jnp.pad(x, width, constant_values=value)

  # q: [..., heads, nq, d] -> [Z, G, nq_p, d]; k, v: [..., kv_heads, nk, d] -> [Z, nk_p, d]
  fq = pad_len(jnp.broadcast_to(q, lead + q.shape[-2:]).reshape((z, groups) + q.shape[-2:]),
               2, nq_p)
  flat_kv = lambda x: pad_len(jnp.broadcast_to(x, zlead + x.shape[-2:]).reshape(
      (z,) + x.shape[-2:]), 1, nk_p)
  lens = None
  if valid_lens is not None:
    lens = T.rows(T.lens_for_rows(valid_lens, shape, fn), n, groups, zlead, (nq,))
    lens = jnp.minimum(lens, nk).astype(jnp.int32)
  elif nk_p > nk:
    lens = jnp.full((1, 1, nq), nk, jnp.int32)  # masks the padded keys
  q_seg = kv_seg = None
  if var.q_segment_ids is not None:
    q_seg = pad_len(T.rows(var.q_segment_ids, n, groups, zlead, (nq,)), 2, nq_p)
    kv_seg = pad_len(T.rows(var.kv_segment_ids, n, groups, zlead, (nk,)), 2, nk_p)
  ex = T.Extras(
      mask=None if mask is None else T.pairwise(jnp.asarray(mask, bool), n, groups, nq_p, nk_p),
      lens=None if lens is None else pad_len(lens, 2, nq_p, value=nk),
      q_seg=None if q_seg is None else q_seg.astype(jnp.int32),
      kv_seg=None if kv_seg is None else kv_seg.astype(jnp.int32),
      slopes=None if var.alibi_slopes is None else T.rows(var.alibi_slopes, n, groups, zlead, ()))
  bias = None if bias is None else T.pairwise(bias, n, groups, nq_p, nk_p)
  out = _kernel(cfg, fq, flat_kv(k), flat_kv(v), bias, ex)
  return out[:, :, :nq].reshape(lead + (nq, v.shape[-1])).astype(q.dtype)


def _k_range(cfg, qi, n_kb):
  """(b, hi) of `_tile_masks.k_tiles`: key tiles [0, b) unmasked, [b, hi) straddling the
  diagonal, for a band without a left edge (causal)."""
  _, _, b, hi = T.k_tiles(cfg, qi, n_kb)
  return b, hi


def _q_range(cfg, ki, n_qb):
  """(lo, a, hi) of `_tile_masks.q_tiles`: query tiles [lo, a) straddling the diagonal,
  [a, hi) unmasked, for a band without a left edge (causal)."""
  lo, a, _, hi = T.q_tiles(cfg, ki, n_qb)
  return lo, a, hi


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


def _forward(cfg, q, k, v, bias, ex):
  """Returns out [Z, G, nq_p, d_v] (float32) and the row logsumexp [Z, G, nq_p]."""
  z, gq, bq, bk = q.shape[0], q.shape[1], cfg.block_q, cfg.block_k
  q = _scaled(q, cfg.scale)
  n_kb = k.shape[1] // bk

  def q_block(i):
    qi = i * bq
    qt = lax.dynamic_slice_in_dim(q, qi, bq, axis=2)

    def step(diag, j, carry):
      m, l, acc = carry
      ki = j * bk
      kt = lax.dynamic_slice_in_dim(k, ki, bk, axis=1)
      vt = lax.dynamic_slice_in_dim(v, ki, bk, axis=1)
      s, _ = T.scores(cfg, qt, kt, qi, ki, ex, bias, diag)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      m_safe = m_new  # finite unless masks can block a whole row so far:
      if T.may_block(cfg, ex, diag):
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # then no NaN
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      l = l * alpha + jnp.sum(p, axis=-1)
      pv = _mm("zqk,zkd->zqd", p.astype(v.dtype), vt)
      return m_new, l, acc * alpha[..., None] + pv

    lo, a, b, hi = T.k_tiles(cfg, qi, n_kb)
    if _static(lo) == 0 and _static(hi) == 1:  # one key tile: the dense softmax, normalised
      # before the second matmul (XLA:CPU runs that form ~1.4x faster than scaling the output)
      diag = not (_static(a) == 0 and _static(b) == 1)
      s, _ = T.scores(cfg, qt, k[:, :bk], qi, 0, ex, bias, diag)
      m = jnp.max(s, axis=-1)
      if T.may_block(cfg, ex, diag):
        p = jnp.exp(s - jnp.where(m == -jnp.inf, 0.0, m)[..., None])
        l = jnp.sum(p, axis=-1)
        l_safe = jnp.where(l > 0, l, 1.0)
      else:
        p = jnp.exp(s - m[..., None])
        l = l_safe = jnp.sum(p, axis=-1)
      out = _mm("zqk,zkd->zqd", (p / l_safe[..., None]).astype(v.dtype), v[:, :bk])
    else:
      init = (jnp.full((z, gq, bq), -jnp.inf, jnp.float32), jnp.zeros((z, gq, bq), jnp.float32),
              jnp.zeros((z, gq, bq, v.shape[-1]), jnp.float32))
      carry = _loop(lo, a, functools.partial(step, True), init)
      carry = _loop(a, b, functools.partial(step, False), carry)
      m, l, acc = _loop(b, hi, functools.partial(step, True), carry)
      l_safe = jnp.where(l > 0, l, 1.0)
      out = acc / l_safe[..., None]  # rows with no valid key: 0
    lse = jnp.where(l > 0, m + jnp.log(l_safe), jnp.inf)
    return out, lse

  _, (outs, lses) = _scan(lambda c, i: (c, q_block(i)), None, q.shape[2] // bq)
  out = jnp.moveaxis(outs, 0, 2).reshape(z, gq, -1, v.shape[-1])
  return out, jnp.moveaxis(lses, 0, 2).reshape(z, gq, -1)


def _mm(spec: str, a, b):
  """A float32-accumulated tile matmul in which [Z, G, rows, .] operands enter as
  [Z, G*rows, .] (a bitcast), so XLA sees the plain batched dot whatever G is; results
  over query rows ('zq.') come back as [Z, G, rows, .]."""
  g = a.shape[1] if a.ndim == 4 else b.shape[1]
  flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1]) if x.ndim == 4 else x
  out = jnp.einsum(spec, flat(a), flat(b), preferred_element_type=jnp.float32)
  return out.reshape(out.shape[0], g, -1, out.shape[-1]) if spec.split("->")[1][1] == "q" else out


def _scaled(q, scale):
  """q * scale in q's dtype: O(N d) multiplies instead of O(N^2) on the scores. Forward
  and backward both score with this same array, so the saved logsumexp matches."""
  return q * jnp.asarray(scale, q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, bias, ex):
  """out [Z, G, nq_p, d_v] float32 for padded q [Z, G, nq_p, d], k/v [Z, nk_p, d].

  Without gradients: `_forward` over independent groups of `cfg.group` rows (mask and bias
  are None when there are several), kernels that XLA:CPU fuses and schedules on their own.
  """
  g = cfg.group
  if g >= q.shape[0]:
    return _forward(cfg, q, k, v, bias, ex)[0]
  rows = lambda s: T.Extras(*(x if x is None or x.shape[0] == 1 else x[s:s + g] for x in ex))
  return jnp.concatenate([_forward(cfg, q[s:s + g], k[s:s + g], v[s:s + g], bias, rows(s))[0]
                          for s in range(0, q.shape[0], g)])


def _flash_fwd(cfg, q, k, v, bias, ex):
  # With gradients: all rows at once (grouping measured slower for forward+backward).
  out, lse = _forward(cfg, q, k, v, bias, ex)
  return out, (q, k, v, bias, ex, out, lse)


def _flash_bwd(cfg, res, d_out):
  """FlashAttention-2 backward: per key tile, walk the query tiles that see it.

  dV += P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dO * O));  dQ += dS' K;  dK += dS'^T Q,
  with dS' = dS * (1 - tanh^2) under soft-capping (dS itself is the bias gradient).
  P is recomputed from the saved logsumexp; dQ (O(N)) is updated in place.
  """
  q, k, v, bias, ex, out, lse = res
  cfg = cfg._replace(block_q=cfg.block_q_bwd, block_k=cfg.block_k_bwd)  # 4 score temporaries
  z, bq, bk = q.shape[0], cfg.block_q, cfg.block_k
  n_qb = q.shape[2] // bq
  q = _scaled(q, cfg.scale)  # so dK = dS^T (scale Q) needs no further scaling
  d_out = d_out.astype(jnp.float32)
  delta = jnp.sum(d_out * out, axis=-1)  # [Z, G, nq_p]
  dtype = v.dtype

  def k_block(carry, j):
    dq, dbias = carry
    ki = j * bk
    kt = lax.dynamic_slice_in_dim(k, ki, bk, axis=1)
    vt = lax.dynamic_slice_in_dim(v, ki, bk, axis=1)

    def step(diag, i, c):
      dq, dbias, dk, dv = c
      qi = i * bq
      qt = lax.dynamic_slice_in_dim(q, qi, bq, axis=2)
      dot = lax.dynamic_slice_in_dim(d_out, qi, bq, axis=2)
      s, th = T.scores(cfg, qt, kt, qi, ki, ex, bias, diag)
      p = jnp.exp(s - lax.dynamic_slice_in_dim(lse, qi, bq, axis=2)[..., None])
      dv = dv + _mm("zqk,zqd->zkd", p.astype(dtype), dot.astype(dtype))
      dp = _mm("zqd,zkd->zqk", dot.astype(dtype), vt)
      ds = p * (dp - lax.dynamic_slice_in_dim(delta, qi, bq, axis=2)[..., None])
      if bias is not None:
        dbias = T.add_tile(dbias, T.untile(ds, bias.shape, cfg.lead), qi, ki)
      if th is not None:  # through softcap * tanh(raw / softcap)
        ds = ds * (1.0 - th * th)
      dsc = ds.astype(dtype)
      dq_t = _mm("zqk,zkd->zqd", dsc, kt)
      dq = lax.dynamic_update_slice_in_dim(
          dq, lax.dynamic_slice_in_dim(dq, qi, bq, axis=2) + dq_t, qi, axis=2)
      dk = dk + _mm("zqk,zqd->zkd", dsc, qt)
      return dq, dbias, dk, dv

    c = (dq, dbias, jnp.zeros((z, bk, k.shape[-1]), jnp.float32),
         jnp.zeros((z, bk, v.shape[-1]), jnp.float32))
    lo, a, b, hi = T.q_tiles(cfg, ki, n_qb)
    c = _loop(lo, a, functools.partial(step, True), c)
    c = _loop(a, b, functools.partial(step, False), c)
    dq, dbias, dk, dv = _loop(b, hi, functools.partial(step, True), c)
    return (dq, dbias), (dk, dv)

  dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  (dq, dbias), (dk, dv) = _scan(k_block, (jnp.zeros(q.shape, jnp.float32), dbias0),
                                 k.shape[1] // bk)
  dk = jnp.moveaxis(dk, 0, 1).reshape(k.shape)
  dv = jnp.moveaxis(dv, 0, 1).reshape(v.shape)
  dbias = None if bias is None else dbias.astype(bias.dtype)
  return ((dq * cfg.scale).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _blockwise_kernel(cfg, q, k, v, bias, ex):
  return _flash(cfg, q, k, v, bias, ex)


# The kernel as one named, jitted call (inlined into the caller's program): its name stays in
# the jaxpr of a model's training step, also under jax.grad, so tests can see which path ran.
_kernel = jax.jit(_blockwise_kernel, static_argnums=0)
