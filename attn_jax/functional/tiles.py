"""Default tile sizes of the blockwise kernel, per backend (pure Python, no arrays).

`blockwise.blockwise_attention` uses `default_blocks` when no tiles are given;
`python -m experiments.tune_blocks` measures candidates on a machine.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

# Default tiles, measured with experiments/tune_blocks.py (interleaved with jax.nn, see
# docs/performance.md). XLA runs each op of a tile over all Z = batch*heads rows at once and every
# tile costs a loop iteration, so on CPU large tiles win: non-causal, forward 4096 x 512
# at Z = 8 (1.5x faster than 512 x 256) and a score budget Z*block_q*block_k of 2^24
# (64 MiB of f32 scores) at Z = 32; the backward, which holds four score-sized
# temporaries, is fastest with full-height 256-wide key tiles. Causal attention skips the
# tiles above the diagonal only if there are several query tiles: 512 rows won there.
# Short causal sequences (one such query tile) do best with square tiles in small budgets,
# so the diagonal skip still pays at batch 4 (N = 512, Z = 32: fwd+bwd 86 ms with 128^2
# tiles, 166 ms with the long-sequence tiles, 106 ms dense).
class Tiles(NamedTuple):
  """Per-backend defaults: key width fwd/bwd, score budgets fwd/bwd, query-row caps, and
  the square-tile budgets for causal sequences of at most `max_block_q_causal` queries
  (0: no special case)."""
  block_k: int
  block_k_bwd: int
  scores: int        # Z * block_q * block_k, forward
  scores_bwd: int    # Z * block_q_bwd * block_k_bwd
  max_block_q: int
  max_block_q_causal: int
  short_causal: int = 0      # Z * side^2, forward
  short_causal_bwd: int = 0  # Z * side^2, backward
  group_rows: int = 0        # run Z rows as independent groups of at least this many
  max_groups: int = 1        # ... and at most this many groups (0 rows: one group)


TILES = {"cpu": Tiles(512, 256, 2**24, 2**23, 4096, 512, 2**21, 2**19, 8, 4),
         "gpu": Tiles(128, 128, 2**14, 2**14, 1024, 1024),
         "tpu": Tiles(512, 512, 2**18, 2**18, 1024, 1024)}
MIN_BLOCK_Q = 64


def _pow2_rows(z: int, bk: int, budget: int, cap: int) -> int:
  """The largest power of two in [MIN_BLOCK_Q, cap] with z * rows * bk <= budget."""
  rows = MIN_BLOCK_Q
  while rows * 2 <= cap and z * rows * 2 * bk <= budget:
    rows *= 2
  return rows


def _pow2_side(z: int, budget: int, cap: int) -> int:
  """The largest power of two in [MIN_BLOCK_Q, cap] with z * side^2 <= budget."""
  side = MIN_BLOCK_Q
  while side * 2 <= cap and z * (side * 2) ** 2 <= budget:
    side *= 2
  return side


def _short_causal(t: Tiles, causal: bool, q_len: int | None) -> bool:
  """Causal over at most `max_block_q_causal` queries, where `t` has square short tiles."""
  return bool(causal and t.short_causal and q_len is not None and q_len <= t.max_block_q_causal)


def default_blocks(z: int, causal: bool = False, backend: str | None = None,
                   q_len: int | None = None,
                   kv_len: int | None = None) -> tuple[int, int, int, int]:
  """(block_q, block_k, block_q_bwd, block_k_bwd) used when none are given, for
  z = batch*heads rows on `backend` (before clipping to the sequence lengths).

  block_k / block_k_bwd are fixed per backend (`TILES`); block_q is the largest power of
  two up to `max_block_q` (`max_block_q_causal` when causal) within the forward score
  budget; block_q_bwd the largest within the backward budget that divides block_q.
  Causal with q_len <= max_block_q_causal (where the backend sets `short_causal`): square
  tiles, the largest powers of two within the `short_causal` budgets; if one forward tile
  covers q_len x kv_len, the backward uses it too (no loops; measured faster).

  Args:
    z: rows of the kernel, batch * heads (the K/V leading axes times the query groups).
    causal: causal attention.
    backend: 'cpu', 'gpu' or 'tpu' (default `jax.default_backend()`).
    q_len: number of queries (selects the short causal tiles).
    kv_len: number of keys.

  Returns:
    (block_q, block_k, block_q_bwd, block_k_bwd) ints.
  """
  t = TILES.get(backend or jax.default_backend(), TILES["cpu"])
  if _short_causal(t, causal, q_len):
    side = _pow2_side(z, t.short_causal, t.max_block_q_causal)
    one_tile = q_len <= side and (kv_len or q_len) <= side and z * side * side <= t.scores_bwd
    side_bwd = side if one_tile else _pow2_side(z, t.short_causal_bwd, side)
    return side, side, side_bwd, side_bwd
  bq = _pow2_rows(z, t.block_k, t.scores, t.max_block_q_causal if causal else t.max_block_q)
  return bq, t.block_k, _pow2_rows(z, t.block_k_bwd, t.scores_bwd, bq), t.block_k_bwd


def group_rows(z: int, causal: bool = False, q_len: int | None = None,
               backend: str | None = None) -> int:
  """Rows per kernel when the forward without gradients runs the Z = batch*heads rows as
  independent kernels (z: one kernel), each with the tiles for all Z rows.

  On CPU separate kernels over groups of 8 rows ran faster than one over all rows at
  batch 4 (N = 512: 22 vs 37 ms; 1,024: 83 vs 98 ms; causal 2,048: 220 vs 272 ms;
  docs/performance.md):
  XLA fuses and schedules the groups on their own. Forward+backward did not gain (N = 256:
  28 vs 20 ms), so under `jax.grad` all rows run at once; short causal sequences did not
  gain either. The group count is capped (`max_groups`): each group is traced and compiled.

  Args:
    z: rows, batch * heads.
    causal: causal attention.
    q_len: number of queries.
    backend: 'cpu', 'gpu' or 'tpu' (default `jax.default_backend()`).

  Returns:
    Rows per kernel (z: a single kernel).
  """
  t = TILES.get(backend or jax.default_backend(), TILES["cpu"])
  if not t.group_rows or z <= t.group_rows or _short_causal(t, causal, q_len):
    return z
  return max(t.group_rows, -(-z // t.max_groups))


def divisor_at_most(n: int, cap: int) -> int:
  """The largest divisor of n that is <= cap (n's tiles must split evenly)."""
  return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def window_cap(band_width: int) -> int:
  """The largest default tile side for a band of `band_width` keys per query (sliding
  window): the largest power of two <= band_width, at least MIN_BLOCK_Q. A query tile then
  visits about (block_q + band_width) / block_k + 1 key tiles, so the cost stays linear in
  the sequence length with little work outside the band."""
  side = MIN_BLOCK_Q
  while side * 2 <= band_width:
    side *= 2
  return side
