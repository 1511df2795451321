"""The per-device program of ring attention (`ring.ring_attention`), forward and backward.

Runs inside `jax.shard_map`: each device holds `chunks` query chunks and `chunks` key/value
chunks of the sequence (positions `qpos`, `kpos`), rotates the key/value chunks `n - 1`
times around mesh axis `axis` with `ppermute`, and folds every (query chunk, key chunk)
tile in key sub-blocks of `block` keys, so it never holds more than [chunk, block] scores.

The backward pass is written by hand (`jax.custom_vjp`), as in flash attention: the
forward keeps only the output and the per-row log-sum-exp; the backward rotates the
key/value chunks again, together with their gradient accumulators dK/dV, recomputes each
tile's weights from the log-sum-exp and, after `n` rotations, every dK/dV is back on the
device that holds its keys. Memory per device is O(sequence / n) in both passes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def make_ring(axis: str, n: int, chunks: int, q_chunk: int, k_chunk: int, block: int,
              scale: float, is_causal: bool, offset: int, kv_len: int, segments: bool):
  """-> ring(q, k, v, qpos, kpos, lens, qseg, kseg) -> out (float32), differentiable in
  q, k, v. Per device: q [b, ..., chunks * q_chunk, d_k], k [b, ..., chunks * k_chunk,
  d_k], v [..., d_v]; qpos [chunks * q_chunk], kpos [chunks * k_chunk] global positions;
  lens [b] valid keys; qseg [b, chunks * q_chunk], kseg [b, chunks * k_chunk] segment ids.
  `offset` = kv_len - q_len (causal alignment)."""
  perm = [(j, (j + 1) % n) for j in range(n)]
  rotate = lambda *xs: tuple(jax.lax.ppermute(x, axis, perm) for x in xs)

  def keep(s, qp, qs, kp, ks, lens):
    """Where query rows (qp [Bq], qs [b, Bq]) may see keys (kp [Bk], ks [b, Bk]):
    bool broadcastable to s [b, ..., Bq, Bk]; and the valid keys [b, ..., Bk, 1]."""
    lead = (1,) * (s.ndim - 3)
    valid = kp[None, :] < jnp.minimum(lens, kv_len)[:, None]               # [b, Bk]
    ok = valid.reshape(valid.shape[:1] + lead + (1, -1))
    if is_causal:
      ok = ok & (kp[None, :] <= qp[:, None] + offset)
    if segments:
      same = qs[:, :, None] == ks[:, None, :]                              # [b, Bq, Bk]
      ok = ok & same.reshape(same.shape[:1] + lead + same.shape[1:])
    return ok, valid.reshape(valid.shape[:1] + lead + (-1, 1))

  def scores(qc, kc):
    return jnp.einsum("...qd,...kd->...qk", qc, kc, preferred_element_type=jnp.float32)

  def sub_blocks(kc, vc, kp, ks):
    """Key chunk -> `block`-key pieces stacked on a leading axis (for a scan)."""
    nb = kc.shape[-2] // block
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[:-2] + (nb, block, x.shape[-1])), -3, 0)
    return (split(kc), split(vc), kp.reshape(nb, block),
            jnp.moveaxis(ks.reshape(ks.shape[0], nb, block), 1, 0))

  def skip(qp, kp):
    """Whether the tile has no visible key: all padding, or (causal) all in the future."""
    out = kp.min() >= kv_len
    return out | (kp.min() > qp.max() + offset) if is_causal else out

  def tiles(step_fn, carry, q_parts, k_parts):
    """step_fn(carry_a_c, q part a, k part c) over every (query chunk a, key chunk c),
    skipping empty tiles. carry = (per-query-chunk list, per-key-chunk list)."""
    rows, cols = carry
    rows, cols = list(rows), list(cols)
    for a in range(chunks):
      for c in range(chunks):
        qa, kc_ = q_parts[a], k_parts[c]
        rows[a], cols[c] = jax.lax.cond(
            skip(qa[1], kc_[2]), lambda r, k_, *_: (r, k_), step_fn, rows[a], cols[c], qa, kc_)
    return rows, cols

  def parts(x, size, axis_=-2):
    """Split the chunks of x along `axis_` (-2 for [.., len, d], -1 for [b, len] / [len])."""
    return [jax.lax.slice_in_dim(x, i * size, (i + 1) * size, axis=x.ndim + axis_)
            for i in range(chunks)]

  def q_parts_of(q, qpos, qseg, *extra):
    pieces = [parts(q, q_chunk), parts(qpos, q_chunk, -1), parts(qseg, q_chunk, -1)]
    pieces += [parts(e, q_chunk, -2 if e.ndim == q.ndim else -1) for e in extra]
    return list(zip(*pieces))

  def k_parts_of(k, v, kpos, kseg):
    return list(zip(parts(k, k_chunk), parts(v, k_chunk), parts(kpos, k_chunk, -1),
                    parts(kseg, k_chunk, -1)))

  # ---- forward: online softmax over the ring --------------------------------------
  def fwd_tile(acc, unused, qa, kc_, lens):
    qc, qp, qs = qa[:3]

    def sub(acc, kb):
      kc, vc, kp, ks = kb
      o, m, l = acc
      s = scores(qc, kc)
      ok, valid = keep(s, qp, qs, kp, ks, lens)
      s = jnp.where(ok, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(s - m_safe[..., None])                                   # 0 where masked
      corr = jnp.exp(m - m_safe)                                           # 0 while m = -inf
      vc = jnp.where(valid, vc.astype(jnp.float32), 0.0)     # NaN at masked keys stays out
      o = o * corr[..., None] + jnp.einsum("...qk,...kd->...qd", p, vc)
      return (o, m_new, l * corr + p.sum(-1)), None

    return jax.lax.scan(sub, acc, sub_blocks(*kc_))[0], unused

  def forward(q, k, v, qpos, kpos, lens, qseg, kseg):
    q = q.astype(jnp.float32) * scale
    rows = [(jnp.zeros(q.shape[:-2] + (q_chunk, v.shape[-1]), jnp.float32),
             jnp.full(q.shape[:-2] + (q_chunk,), -jnp.inf, jnp.float32),
             jnp.zeros(q.shape[:-2] + (q_chunk,), jnp.float32)) for _ in range(chunks)]
    cols = [jnp.zeros(())] * chunks
    qp = q_parts_of(q, qpos, qseg)
    step_fn = lambda r, c_, qa, kc_: fwd_tile(r, c_, qa, kc_, lens)
    rows, _ = tiles(step_fn, (rows, cols), qp, k_parts_of(k, v, kpos, kseg))

    def step(carry, _):
      rows, k, v, kpos, kseg = carry
      k, v, kpos, kseg = rotate(k, v, kpos, kseg)
      rows, _ = tiles(step_fn, (rows, cols), qp, k_parts_of(k, v, kpos, kseg))
      return (rows, k, v, kpos, kseg), None

    if n > 1:
      (rows, *_), _ = jax.lax.scan(step, (rows, k, v, kpos, kseg), None, length=n - 1)
    o = jnp.concatenate([r[0] for r in rows], axis=-2)
    m = jnp.concatenate([r[1] for r in rows], axis=-1)
    l = jnp.concatenate([r[2] for r in rows], axis=-1)
    out = o / jnp.where(l > 0, l, 1.0)[..., None]
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), jnp.inf)  # +inf: no key
    return out, lse

  # ---- backward: recompute each tile from the log-sum-exp; dK/dV travel with K/V ---
  def bwd_tile(dq_a, dkv_c, qa, kc_, lens):
    qc, qp, qs, do, lse, dsum = qa

    def sub(dq, kb):
      kc, vc, kp, ks = kb
      s = scores(qc, kc)
      ok, valid = keep(s, qp, qs, kp, ks, lens)
      p = jnp.where(ok, jnp.exp(s - lse[..., None]), 0.0)                  # [.., Bq, Bk]
      kc = jnp.where(valid, kc.astype(jnp.float32), 0.0)
      vc = jnp.where(valid, vc.astype(jnp.float32), 0.0)
      dv = jnp.einsum("...qk,...qd->...kd", p, do)
      ds = p * (jnp.einsum("...qd,...kd->...qk", do, vc) - dsum[..., None])
      dk = jnp.einsum("...qk,...qd->...kd", ds, qc)
      return dq + jnp.einsum("...qk,...kd->...qd", ds, kc), (dk, dv)

    dq_a, (dk, dv) = jax.lax.scan(sub, dq_a, sub_blocks(*kc_))
    merge = lambda x: jnp.moveaxis(x, 0, -3).reshape(x.shape[1:-2] + (-1, x.shape[-1]))
    return dq_a, (dkv_c[0] + merge(dk), dkv_c[1] + merge(dv))

  def backward(res, d_out):
    q, k, v, qpos, kpos, lens, qseg, kseg, out, lse = res
    qs_ = q.astype(jnp.float32) * scale
    do = d_out.astype(jnp.float32)
    dsum = jnp.sum(do * out, axis=-1)                                      # [.., Bq]
    qp = q_parts_of(qs_, qpos, qseg, do, lse, dsum)
    step_fn = lambda r, c_, qa, kc_: bwd_tile(r, c_, qa, kc_, lens)
    rows = [jnp.zeros(qs_.shape[:-2] + (q_chunk, q.shape[-1]), jnp.float32)] * chunks
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)

    def visit(rows, k, v, kpos, kseg, dk, dv):
      cols = list(zip(parts(dk, k_chunk), parts(dv, k_chunk)))
      rows, cols = tiles(step_fn, (rows, cols), qp, k_parts_of(k, v, kpos, kseg))
      return rows, jnp.concatenate([c[0] for c in cols], -2), jnp.concatenate(
          [c[1] for c in cols], -2)

    def step(carry, _):
      rows, k, v, kpos, kseg, dk, dv = carry
      rows, dk, dv = visit(rows, k, v, kpos, kseg, dk, dv)
      k, v, kpos, kseg, dk, dv = rotate(k, v, kpos, kseg, dk, dv)
      return (rows, k, v, kpos, kseg, dk, dv), None

    carry = (rows, k, v, kpos, kseg, dk, dv)
    if n > 1:
      carry, _ = jax.lax.scan(step, carry, None, length=n - 1)
    rows, k, v, kpos, kseg, dk, dv = carry
    rows, dk, dv = visit(rows, k, v, kpos, kseg, dk, dv)
    if n > 1:  # the last hop home: dK/dV of the chunks this device holds
      dk, dv = rotate(dk, dv)
    dq = jnp.concatenate(rows, axis=-2) * scale
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            None, None, None, None, None)

  @jax.custom_vjp
  def ring(q, k, v, qpos, kpos, lens, qseg, kseg):
    return forward(q, k, v, qpos, kpos, lens, qseg, kseg)[0]

  def ring_fwd(q, k, v, qpos, kpos, lens, qseg, kseg):
    out, lse = forward(q, k, v, qpos, kpos, lens, qseg, kseg)
    return out, (q, k, v, qpos, kpos, lens, qseg, kseg, out, lse)

  ring.defvjp(ring_fwd, backward)
  return ring
