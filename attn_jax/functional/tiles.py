"""Default tile sizes of the blockwise kernel, per backend (pure Python, no arrays).

`blockwise.blockwise_attention` uses `default_blocks` when no tiles are given;
`python -m experiments.tune_blocks` measures candidates on a machine.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

# Default tiles, measured with experiments/tune_blocks.py (interleaved with jax.nn, see the
# README). XLA runs each op of a tile over all Z = batch*heads rows at once and every
# tile costs a loop iteration, so on CPU large tiles win: non-causal, forward 4096 x 512
# at Z = 8 (1.5x faster than 512 x 256) and a score budget Z*block_q*block_k of 2^24
# (64 MiB of f32 scores) at Z = 32; the backward, which holds four score-sized
# temporaries, is fastest with full-height 256-wide key tiles. Causal attention skips the
# tiles above the diagonal only if there are several query tiles: 512 rows won there.
class Tiles(NamedTuple):
  """Per-backend defaults: key width fwd/bwd, score budgets fwd/bwd, query-row caps."""
  block_k: int
  block_k_bwd: int
  scores: int        # Z * block_q * block_k, forward
  scores_bwd: int    # Z * block_q_bwd * block_k_bwd
  max_block_q: int
  max_block_q_causal: int


TILES = {"cpu": Tiles(512, 256, 2**24, 2**23, 4096, 512),
         "gpu": Tiles(128, 128, 2**14, 2**14, 1024, 1024),
         "tpu": Tiles(512, 512, 2**18, 2**18, 1024, 1024)}
MIN_BLOCK_Q = 64


def _pow2_rows(z: int, bk: int, budget: int, cap: int) -> int:
  """The largest power of two in [MIN_BLOCK_Q, cap] with z * rows * bk <= budget."""
  rows = MIN_BLOCK_Q
  while rows * 2 <= cap and z * rows * 2 * bk <= budget:
    rows *= 2
  return rows


def default_blocks(z: int, causal: bool = False,
                   backend: str | None = None) -> tuple[int, int, int, int]:
  """(block_q, block_k, block_q_bwd, block_k_bwd) used when none are given, for
  z = batch*heads rows on `backend` (before clipping to the sequence lengths).

  block_k / block_k_bwd are fixed per backend (`TILES`); block_q is the largest power of
  two up to `max_block_q` (`max_block_q_causal` when causal) within the forward score
  budget; block_q_bwd the largest within the backward budget that divides block_q.
  """
  t = TILES.get(backend or jax.default_backend(), TILES["cpu"])
  bq = _pow2_rows(z, t.block_k, t.scores, t.max_block_q_causal if causal else t.max_block_q)
  return bq, t.block_k, _pow2_rows(z, t.block_k_bwd, t.scores_bwd, bq), t.block_k_bwd


def _divisor_at_most(n: int, cap: int) -> int:
  """The largest divisor of n that is <= cap (n's tiles must split evenly)."""
  return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)
