"""Ring attention: exact softmax attention with the sequence split over a mesh axis.

Each of the `n` devices of mesh axis `axis` holds one block of the queries and one block
of the keys/values. Every step it attends its queries to the key/value block it holds,
folding the result into running (max, sum, output) accumulators (online softmax), then
passes the key/value block to the next device with `jax.lax.ppermute`; after `n` steps
every query has seen every key, and no device ever held more than one key/value block.
The per-device work is plain `jnp` on [block, block] tiles, inside `jax.shard_map`.

- Causal attention skips the tiles that lie entirely in the future (`lax.cond`). With
  `zigzag=True` (the default when causal) the sequence is cut into `2n` chunks and device
  `i` holds chunks `i` and `2n-1-i`, so every device skips the same number of tiles:
  the work is balanced over the ring.
- Padding: `valid_lens` [batch] masks keys at and past each sequence's length; rows with
  no valid key give zeros, values at masked keys never reach the output (NaN included).
- Lengths that are not a multiple of `n` (`2n` for zigzag) are padded internally and the
  padding is removed from the output.
- Gradients: reverse-mode autodiff through the ring (each `ppermute` transposes to the
  reverse rotation); every tile is rematerialised (`jax.checkpoint`), so the backward pass
  keeps one key/value block per step, not the [block, sequence] weights. There is no
  hand-written ring backward pass (a custom VJP that rotates dK/dV too).
"""
from __future__ import annotations

import math
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from attn_jax.functional import _checks as C


def _order(length: int, n: int, chunks: int) -> tuple[np.ndarray, int]:
  """Positions in device order (padded to a multiple of n * chunks) and the chunk size.

  Device i holds chunk i (chunks=1) or chunks i and 2n-1-i (chunks=2, zigzag)."""
  size = -(-length // (n * chunks))
  if chunks == 1:
    order = list(range(n))
  else:
    order = [c for i in range(n) for c in (i, 2 * n - 1 - i)]
  pos = np.concatenate([np.arange(c * size, (c + 1) * size) for c in order])
  return pos, size


def _to_ring(x: jax.Array, pos: np.ndarray) -> jax.Array:
  """x [..., length, d] -> [..., len(pos), d]: rows in device order, zeros as padding."""
  length = x.shape[-2]
  pad = int(pos.max()) + 1 - length
  if pad > 0:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)])
  return x if np.array_equal(pos, np.arange(len(pos))) else jnp.take(x, pos, axis=-2)


def _from_ring(x: jax.Array, pos: np.ndarray, length: int) -> jax.Array:
  """Inverse of `_to_ring`: [..., len(pos), d] -> [..., length, d]."""
  if not np.array_equal(pos, np.arange(len(pos))):
    x = jnp.take(x, np.argsort(pos), axis=-2)
  return x[..., :length, :]


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, mesh: Mesh, axis: str = "seq", *,
                   valid_lens: jax.Array | None = None, is_causal: bool = False,
                   scale: float | None = None, zigzag: bool | None = None,
                   batch_axis: str | tuple[str, ...] | None = None) -> jax.Array:
  """Softmax attention with q, k, v split along the sequence over mesh axis `axis`.

  Args:
    q: [batch, ..., q_len, d_k] (e.g. [batch, heads, q_len, d_k]); any sharding.
    k: [batch, ..., kv_len, d_k], same leading axes as q.
    v: [batch, ..., kv_len, d_v].
    mesh: a mesh with axis `axis` (e.g. `attn_jax.train.sharding.make_mesh('seq=8')`).
    axis: the mesh axis the sequence is split over.
    valid_lens: [batch] integer number of valid keys per sequence (padding mask).
    is_causal: query i sees keys j <= i + kv_len - q_len (aligned at the end, as
      `F.attention`).
    scale: score scale (default 1/sqrt(d_k)).
    zigzag: the load-balanced layout (default: when causal).
    batch_axis: mesh axis (or axes) the batch is split over as well (default: none).
  Returns:
    [batch, ..., q_len, d_v] in q's dtype. The zigzag layout (and padding to a multiple
    of the ring) reorders the rows of q, k, v and the output here, around the ring; a
    model that keeps its sequence in that order throughout would skip those gathers.
  """
  fn = "ring_attention"
  C.check_rank(fn, "q", q, "[batch, ..., q_len, d_k]", min_rank=3)
  if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
    C.fail(fn, "k", k, f"[{', '.join(map(str, q.shape[:-2]))}, kv_len, {q.shape[-1]}]")
  if v.shape[:-1] != k.shape[:-1]:
    C.fail(fn, "v", v, f"[{', '.join(map(str, k.shape[:-1]))}, d_v]")
  if axis not in mesh.axis_names:
    raise ValueError(f"{fn}: mesh has no axis {axis!r} (axes {mesh.axis_names}).")
  n = dict(mesh.shape)[axis]
  zigzag = is_causal if zigzag is None else zigzag
  chunks = 2 if zigzag else 1
  q_len, kv_len = q.shape[-2], k.shape[-2]
  q_pos, q_chunk = _order(q_len, n, chunks)
  k_pos, k_chunk = _order(kv_len, n, chunks)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  lens = (jnp.full(q.shape[:1], kv_len, jnp.int32) if valid_lens is None
          else jnp.broadcast_to(jnp.asarray(valid_lens, jnp.int32), q.shape[:1]))
  lead = (batch_axis,) + (None,) * (q.ndim - 3)
  seq_spec, pos_spec = P(*lead, axis, None), P(axis)
  body = _make_body(axis, n, chunks, q_chunk, k_chunk, scale, is_causal, kv_len - q_len, kv_len)
  ring = jax.shard_map(body, mesh=mesh, in_specs=(seq_spec, seq_spec, seq_spec, pos_spec,
                                                  pos_spec, P(batch_axis)),
                       out_specs=seq_spec, check_vma=False)
  out = ring(_to_ring(q, q_pos), _to_ring(k, k_pos), _to_ring(v, k_pos),
             jnp.asarray(q_pos, jnp.int32), jnp.asarray(k_pos, jnp.int32), lens)
  return _from_ring(out, q_pos, q_len).astype(q.dtype)


def _make_body(axis: str, n: int, chunks: int, q_chunk: int, k_chunk: int, scale: float,
               is_causal: bool, offset: int, kv_len: int):
  """The per-device program: q [b, ..., chunks * q_chunk, d] and the key/value block it
  holds, rotated n - 1 times around the ring."""
  perm = [(j, (j + 1) % n) for j in range(n)]

  @jax.checkpoint
  def tile(acc, qc, qp, kc, vc, kp, lens):
    """Folds keys kc [b, ..., Bk, d] at positions kp [Bk] into the accumulators of the
    queries qc [b, ..., Bq, d] at positions qp [Bq]: o [.., Bq, d_v], m, l [.., Bq]."""
    o, m, l = acc
    s = jnp.einsum("...qd,...kd->...qk", qc, kc.astype(jnp.float32))     # [b, .., Bq, Bk]
    valid = kp[None, :] < jnp.minimum(lens, kv_len)[:, None]               # [b, Bk]
    lead = (1,) * (s.ndim - 3)
    ok = valid.reshape(valid.shape[:1] + lead + (1, -1))
    if is_causal:
      ok = ok & (kp[None, :] <= qp[:, None] + offset)
    s = jnp.where(ok, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - m_safe[..., None])                                     # 0 where masked
    corr = jnp.exp(m - m_safe)                                             # 0 while m = -inf
    key_ok = valid.reshape(valid.shape[:1] + lead + (-1, 1))
    vc = jnp.where(key_ok, vc.astype(jnp.float32), 0.0)      # NaN at masked keys stays out
    o = o * corr[..., None] + jnp.einsum("...qk,...kd->...qd", p, vc)
    return o, m_new, l * corr + p.sum(-1)

  def fold(acc, q, qpos, k, v, kpos, lens):
    """Every (query chunk, key chunk) tile of this step; causal tiles wholly in the
    future are skipped."""
    outs = []
    for a in range(chunks):
      rows = slice(a * q_chunk, (a + 1) * q_chunk)
      acc_a = tuple(x[..., rows, :] if x.ndim == q.ndim else x[..., rows] for x in acc)
      for c in range(chunks):
        cols = slice(c * k_chunk, (c + 1) * k_chunk)
        args = (q[..., rows, :], qpos[rows], k[..., cols, :], v[..., cols, :], kpos[cols], lens)
        skip = kpos[cols].min() >= kv_len
        if is_causal:
          skip = skip | (kpos[cols].min() > qpos[rows].max() + offset)
        acc_a = jax.lax.cond(skip, lambda acc_, *_: acc_, tile, acc_a, *args)
      outs.append(acc_a)
    return tuple(jnp.concatenate(parts, axis=-2 if parts[0].ndim == q.ndim else -1)
                 for parts in zip(*outs))

  def body(q, k, v, qpos, kpos, lens):
    q = q.astype(jnp.float32) * scale
    acc = (jnp.zeros(q.shape[:-1] + v.shape[-1:], jnp.float32),
           jnp.full(q.shape[:-1], -jnp.inf, jnp.float32), jnp.zeros(q.shape[:-1], jnp.float32))
    acc = fold(acc, q, qpos, k, v, kpos, lens)

    def step(carry, _):
      acc, k, v, kpos = carry
      k, v, kpos = (jax.lax.ppermute(x, axis, perm) for x in (k, v, kpos))
      return (fold(acc, q, qpos, k, v, kpos, lens), k, v, kpos), None

    (acc, *_), _ = jax.lax.scan(step, (acc, k, v, kpos), None, length=n - 1)
    o, _, l = acc
    return o / jnp.where(l > 0, l, 1.0)[..., None]

  return body
