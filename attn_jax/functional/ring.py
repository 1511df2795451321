"""Ring attention: exact softmax attention with the sequence split over a mesh axis.

Each of the `n` devices of mesh axis `axis` holds one block of the queries and one block
of the keys/values. Every step it attends its queries to the key/value block it holds,
folding the result into running (max, sum, output) accumulators (online softmax), then
passes the key/value block to the next device with `jax.lax.ppermute`; after `n` steps
every query has seen every key, and no device ever held more than one key/value block.
The per-device work is plain `jnp`, inside `jax.shard_map`: each (query chunk, key chunk)
pair is folded in key sub-blocks of at most `block` keys (default 512), so a device holds
[chunk, block] scores at a time, never [chunk, chunk]: per-device memory is O(N / n).

Under `jax.set_mesh(mesh)` with a 'seq' axis of size > 1, `F.attention` (and so every
`MultiHeadAttention`) runs this ring by itself when the request is one it supports
(`ring_supported`); `mesh=None` here uses that context mesh too.

- Causal attention skips the tiles that lie entirely in the future (`lax.cond`). With
  `zigzag=True` (the default when causal) the sequence is cut into `2n` chunks and device
  `i` holds chunks `i` and `2n-1-i`, so every device skips the same number of tiles:
  the work is balanced over the ring.
- Padding: `valid_lens` [batch] masks keys at and past each sequence's length; rows with
  no valid key give zeros, values at masked keys never reach the output (NaN included).
- Packed sequences: `q_segment_ids` / `kv_segment_ids` [batch, len] (or [len]) rotate with
  their keys; a query attends only to keys of its own segment.
- Grouped K/V heads (GQA/MQA, on axis -3) are repeated to the query heads inside the ring.
- Lengths that are not a multiple of `n` (`2n` for zigzag) are padded internally and the
  padding is removed from the output.
- Gradients: a hand-written ring backward (`_ring_kernel`, `jax.custom_vjp`): the forward
  keeps only the output and each row's log-sum-exp; the backward rotates K/V again with
  their dK/dV accumulators and recomputes every tile's weights, so it too holds O(N / n)
  per device.
"""
from __future__ import annotations

import math
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from attn_jax.functional import _checks as C
from attn_jax.functional._ring_kernel import make_ring


def _order(length: int, n: int, chunks: int, block: int) -> tuple[np.ndarray, int]:
  """Positions in device order (padded to a multiple of n * chunks) and the chunk size
  (a multiple of `block` when larger than it).

  Device i holds chunk i (chunks=1) or chunks i and 2n-1-i (chunks=2, zigzag)."""
  size = -(-length // (n * chunks))
  if size > block:
    size = -(-size // block) * block
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


RING_AXIS = "seq"          # the mesh axis F.attention's dispatch rings over
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "model"
DEFAULT_BLOCK = 512


def context_mesh(axis: str = RING_AXIS):
  """The mesh set by `jax.set_mesh` if it has axis `axis` of size > 1, else None.

  Args:
    axis: the mesh axis name to look for (default 'seq', `RING_AXIS`).

  Returns:
    The context `jax.sharding.AbstractMesh`, or None without a mesh, without `axis`, or
    with `axis` of size 1.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names or dict(mesh.shape)[axis] == 1:
    return None
  return mesh


def ring_supported(q, k, v, *, mask=None, bias=None, valid_lens=None, window=None,
                   softcap=None, alibi_slopes=None, custom_scorer: bool = False,
                   dropout_rate: float = 0.0, return_weights: bool = False,
                   segment_ids=(None, None)) -> str | None:
  """None if `ring_attention` can run this `F.attention` request, else what it lacks.

  Args:
    q: [batch, ..., q_len, d_k] queries (at least 3 axes: a batch axis).
    k: [batch, ..., kv_len, d_k] keys with q's axes before the heads axis (-3).
    v: [batch, ..., kv_len, d_v] values, as k.
    mask: as in `F.attention`; not supported (only its presence matters).
    bias: as in `F.attention`; not supported.
    valid_lens: supported only as [batch].
    window: not supported.
    softcap: not supported.
    alibi_slopes: not supported.
    custom_scorer: whether `F.attention` got a `score_fn`; not supported.
    dropout_rate: not supported when > 0.
    return_weights: not supported.
    segment_ids: (q_segment_ids, kv_segment_ids), each None, [len] or [batch, len].

  Returns:
    None when supported, else a comma-separated description of what is not, e.g.
    'mask, valid_lens other than [batch]'.
  """
  lacks = [name for name, given in (
      ("mask", mask is not None), ("bias", bias is not None), ("window", window is not None),
      ("softcap", softcap is not None), ("alibi_slopes", alibi_slopes is not None),
      ("score_fn", custom_scorer), ("dropout_rate", dropout_rate > 0.0),
      ("return_weights", return_weights)) if given]
  if valid_lens is not None and jnp.ndim(valid_lens) != 1:
    lacks.append("valid_lens other than [batch]")
  if any(ids is not None and jnp.ndim(ids) > 2 for ids in segment_ids):
    lacks.append("segment ids other than [batch, len] or [len]")
  if q.ndim < 3:
    lacks.append("q without a batch axis ([batch, ..., q_len, d_k])")
  elif k.shape[:-3] != q.shape[:-3] or v.shape[:-3] != q.shape[:-3]:
    lacks.append("broadcast leading axes")
  return ", ".join(lacks) or None


def _divides(mesh, axes: tuple[str, ...], size: int) -> tuple[str, ...] | None:
  """The axes of `axes` (of size > 1) that `mesh` has, if their product divides `size`."""
  axes = tuple(a for a in axes if a in mesh.axis_names and dict(mesh.shape)[a] > 1)
  return axes if axes and size % math.prod(dict(mesh.shape)[a] for a in axes) == 0 else None


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                   mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
                   axis: str = RING_AXIS, *, valid_lens: jax.Array | None = None,
                   is_causal: bool = False, q_segment_ids: jax.Array | None = None,
                   kv_segment_ids: jax.Array | None = None, scale: float | None = None,
                   zigzag: bool | None = None, batch_axis: str | tuple[str, ...] | None = None,
                   head_axis: str | None = None, block: int = DEFAULT_BLOCK) -> jax.Array:
  """Softmax attention with q, k, v split along the sequence over mesh axis `axis`.

  Args:
    q: [batch, ..., q_len, d_k] (e.g. [batch, heads, q_len, d_k]); any sharding.
    k: [batch, ..., kv_len, d_k], same leading axes as q, except that the heads axis
      (-3) may hold fewer K/V heads that divide q's (GQA/MQA).
    v: [batch, ..., kv_len, d_v], k's leading axes.
    mesh: a `Mesh` (or AbstractMesh) with axis `axis` (e.g.
      `attn_jax.train.sharding.make_mesh('seq=8')`); None: the mesh of `jax.set_mesh`.
    axis: the mesh axis the sequence is split over.
    valid_lens: [batch] integer number of valid keys per sequence (padding mask).
    is_causal: query i sees keys j <= i + kv_len - q_len (aligned at the end, as
      `F.attention`).
    q_segment_ids: [batch, q_len] or [q_len] integer ids of packed sequences; a query
      attends only to keys with its id (default: kv_segment_ids when only those are given).
    kv_segment_ids: [batch, kv_len] or [kv_len] integer ids of the keys (default:
      q_segment_ids; needed when kv_len != q_len).
    scale: score scale (default 1/sqrt(d_k)).
    zigzag: the load-balanced layout (default: when causal).
    batch_axis: mesh axis (or axes) the batch is split over as well (default: none).
    head_axis: mesh axis the heads (axis 1 of a rank-4 q) are split over (default: none).
    block: keys per sub-block of the per-device tiles (memory [chunk, block] per tile).

  Returns:
    [batch, ..., q_len, d_v] in q's dtype. The zigzag layout (and padding to a multiple
    of the ring) reorders the rows of q, k, v and the output here, around the ring; a
    model that keeps its sequence in that order throughout would skip those gathers.

  Raises:
    ShapeError: q, k, v or segment ids of the wrong shape.
    ValueError: `block` < 1, a mesh without `axis`, or segment ids for q only when
      kv_len != q_len.
  """
  fn = "ring_attention"
  C.check_rank(fn, "q", q, "[batch, ..., q_len, d_k]", min_rank=3)
  if k.ndim != q.ndim or k.shape[-1] != q.shape[-1]:
    C.fail(fn, "k", k, f"[{', '.join(map(str, q.shape[:-2]))}, kv_len, {q.shape[-1]}]")
  groups = 1
  if k.shape[:-2] != q.shape[:-2] and q.ndim >= 4 and k.shape[:-3] == q.shape[:-3] \
      and k.shape[-3] > 0 and q.shape[-3] % k.shape[-3] == 0:
    groups = q.shape[-3] // k.shape[-3]
  elif k.shape[:-2] != q.shape[:-2]:
    C.fail(fn, "k", k, f"[{', '.join(map(str, q.shape[:-2]))}, kv_len, {q.shape[-1]}]")
  if v.shape[:-1] != k.shape[:-1]:
    C.fail(fn, "v", v, f"[{', '.join(map(str, k.shape[:-1]))}, d_v]")
  if block < 1:
    raise ValueError(f"{fn}: argument 'block' must be >= 1, got {block}.")
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if getattr(mesh, "empty", False) or axis not in mesh.axis_names:
    raise ValueError(f"{fn}: mesh has no axis {axis!r} (axes {tuple(mesh.axis_names)}); pass "
                     "a mesh or call it under jax.set_mesh(mesh).")
  if groups > 1:  # the ring rotates whole K/V blocks: give every query head its own
    k, v = (jnp.repeat(x, groups, axis=-3) for x in (k, v))
  n = dict(mesh.shape)[axis]
  zigzag = is_causal if zigzag is None else zigzag
  chunks = 2 if zigzag else 1
  q_len, kv_len, b = q.shape[-2], k.shape[-2], q.shape[0]
  q_pos, q_chunk = _order(q_len, n, chunks, block)
  k_pos, k_chunk = _order(kv_len, n, chunks, block)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  lens = (jnp.full((b,), kv_len, jnp.int32) if valid_lens is None
          else jnp.broadcast_to(jnp.asarray(valid_lens, jnp.int32), (b,)))
  segments = q_segment_ids is not None or kv_segment_ids is not None
  if segments:
    if kv_segment_ids is None and kv_len != q_len:
      raise ValueError(f"{fn}: kv_segment_ids is needed when kv_len={kv_len} != q_len={q_len}.")
    q_seg = q_segment_ids if q_segment_ids is not None else kv_segment_ids
    kv_seg = kv_segment_ids if kv_segment_ids is not None else q_segment_ids
    for name, ids, length in (("q_segment_ids", q_seg, q_len), ("kv_segment_ids", kv_seg, kv_len)):
      if jnp.ndim(ids) not in (1, 2) or jnp.shape(ids)[-1] != length or (
          jnp.ndim(ids) == 2 and jnp.shape(ids)[0] not in (1, b)):
        C.fail(fn, name, jnp.asarray(ids), f"[{b}, {length}] or [{length}]")
    seg = lambda ids, n_: jnp.broadcast_to(jnp.asarray(ids, jnp.int32), (b, n_))
    q_seg, kv_seg = seg(q_seg, q_len), seg(kv_seg, kv_len)
  else:  # one segment
    q_seg, kv_seg = jnp.zeros((b, q_len), jnp.int32), jnp.zeros((b, kv_len), jnp.int32)
  lead = (batch_axis,) + (None,) * (q.ndim - 3)
  if head_axis is not None and q.ndim == 4:
    lead = (batch_axis, head_axis)
  seq_spec, pos_spec, ids_spec = P(*lead, axis, None), P(axis), P(batch_axis, axis)
  body = make_ring(axis, n, chunks, q_chunk, k_chunk, min(block, k_chunk), scale, is_causal,
                   kv_len - q_len, kv_len, segments)
  ring = jax.shard_map(body, mesh=mesh,
                       in_specs=(seq_spec, seq_spec, seq_spec, pos_spec, pos_spec,
                                 P(batch_axis), ids_spec, ids_spec),
                       out_specs=seq_spec, check_vma=False)
  ids_to_ring = lambda ids, pos: _to_ring(ids[..., None], pos)[..., 0]
  out = ring(_to_ring(q, q_pos), _to_ring(k, k_pos), _to_ring(v, k_pos),
             jnp.asarray(q_pos, jnp.int32), jnp.asarray(k_pos, jnp.int32), lens,
             ids_to_ring(q_seg, q_pos), ids_to_ring(kv_seg, k_pos))
  return _from_ring(out, q_pos, q_len).astype(q.dtype)


def context_ring_attention(q, k, v, *, valid_lens=None, is_causal=False, q_segment_ids=None,
                           kv_segment_ids=None, scale=None) -> jax.Array:
  """`ring_attention` on the `jax.set_mesh` mesh's 'seq' axis, with the batch over the
  mesh's 'data'/'fsdp' axes and the heads over 'model' where they divide (as the runner
  lays out activations); what `F.attention` calls under such a mesh.

  Args:
    q: [batch, ..., q_len, d_k] queries (e.g. [batch, heads, q_len, d_k]).
    k: [batch, ..., kv_len, d_k] keys; the heads axis (-3) may hold fewer heads (GQA).
    v: [batch, ..., kv_len, d_v] values.
    valid_lens: [batch] integer number of valid keys per sequence.
    is_causal: query i sees keys j <= i + kv_len - q_len.
    q_segment_ids: [batch, q_len] or [q_len] integer ids of packed sequences.
    kv_segment_ids: [batch, kv_len] or [kv_len] (default: q_segment_ids).
    scale: score scale (default 1/sqrt(d_k)).

  Returns:
    [batch, ..., q_len, d_v] in q's dtype. Call it only where `context_mesh()` is not
    None (`F.attention` checks).
  """
  mesh = context_mesh()
  batch = _divides(mesh, BATCH_AXES, q.shape[0])
  heads = None
  if q.ndim == 4 and _divides(mesh, (HEAD_AXIS,), math.gcd(q.shape[1], k.shape[1])):
    heads = HEAD_AXIS
  return ring_attention(q, k, v, mesh, RING_AXIS, valid_lens=valid_lens, is_causal=is_causal,
                        q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, scale=scale,
                        batch_axis=None if batch is None else (
                            batch[0] if len(batch) == 1 else batch),
                        head_axis=heads)
