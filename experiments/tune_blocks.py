"""Measure blockwise attention's tile sizes on this machine, side by side with jax.nn.

Each candidate `BQxBK` (forward query rows x key columns per tile; `BQxBK:BQBxBKB` also
sets the backward's tile, `BQxBK:BQB` only its query rows) runs `F.blockwise_attention` on batch B, 8 heads, head dim 64,
f32, interleaved with `jax.nn.dot_product_attention` (xla) over `--rounds` rounds (order
alternating), median time after compile with `block_until_ready`. The default tiles
(`tiles.default_blocks`) are always included, as 'default'.

  python -m experiments.tune_blocks --n 4096 --mode fwd --tiles 512x256,1024x512,2048x512
  python -m experiments.tune_blocks --n 4096 --mode fwdbwd --tiles 4096x512:4096x256,512x512:128
  python -m experiments.tune_blocks --n 512 --batch 4 --tiles '' --groups 8,32   # row groups

Prints a markdown table, fastest first. Put the winner into `tiles.TILES` for the
backend, then confirm with `experiments/bench_attention.py`.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax import functional as F
from attn_jax.functional import tiles
from experiments import bench_attention as bench
from experiments.bench_attention import HEAD_DIM, HEADS, flops, matmul_gflops


def parse_tile(s: str) -> tuple[int, int, int | None, int | None]:
  """'512x256' -> (512, 256, None, None); '512x256:128' -> (512, 256, 128, None);
  '512x256:128x64' -> (512, 256, 128, 64)."""
  try:
    fwd, _, bwd = s.partition(":")
    bq, bk = (int(x) for x in fwd.split("x"))
    bqb, _, bkb = bwd.partition("x")
    return bq, bk, int(bqb) if bqb else None, int(bkb) if bkb else None
  except ValueError:
    raise argparse.ArgumentTypeError(f"a tile is BQxBK, BQxBK:BQB or BQxBK:BQBxBKB, e.g. "
                                     f"4096x512:4096x256; got {s!r}")


def make_step(tile, causal: bool, mode: str):
  """tile: 'default', 'xla', (bq, bk, bqb, bkb) or ('rows', g) (default tiles, groups of g)."""
  if tile == "xla":
    return bench.make_step("xla", causal, mode)
  group = tile[1] if tile[0] == "rows" else None
  bq, bk, bqb, bkb = (None,) * 4 if tile == "default" or group else tile
  return bench.as_step(lambda q, k, v: F.blockwise_attention(
      q, k, v, is_causal=causal, block_q=bq, block_k=bk, block_q_bwd=bqb, block_k_bwd=bkb,
      group_size=group), mode)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, default=4096)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwd")
  p.add_argument("--causal", action="store_true")
  p.add_argument("--tiles", type=lambda s: [parse_tile(x) for x in s.split(",") if x],
                 default=[parse_tile(x) for x in "512x256,512x512,1024x512,2048x512,4096x512".split(",")])
  p.add_argument("--groups", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                 help="also run the default tiles with these forward group sizes (rows per "
                      "kernel without gradients, blockwise_attention(group_size=...)), e.g. 8,32")
  p.add_argument("--no-xla", action="store_true", help="skip the dense peer (large N)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--min-seconds", type=float, default=1.0, help="per candidate and round")
  args = p.parse_args(argv)

  n, b = args.n, args.batch
  cands = (["default"] + list(dict.fromkeys(args.tiles)) + [("rows", g) for g in args.groups] +
           ([] if args.no_xla else ["xla"]))
  keys = jax.random.split(jax.random.key(0), 4)
  xs = [jax.random.normal(kk, (b, HEADS, n, HEAD_DIM), jnp.float32)
        for kk in keys[: 3 if args.mode == "fwd" else 4]]
  steps = {}
  for c in cands:
    t0 = time.perf_counter()
    steps[c] = make_step(c, args.causal, args.mode).lower(*xs).compile()
    jax.block_until_ready(steps[c](*xs))  # warm-up
    print(f"compiled {c} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
  samples = {c: [] for c in cands}
  for r in range(args.rounds):
    for c in (cands if r % 2 == 0 else cands[::-1]):
      spent = 0.0
      while spent < args.min_seconds or not samples[c]:
        t0 = time.perf_counter()
        jax.block_until_ready(steps[c](*xs))
        dt = time.perf_counter() - t0
        samples[c].append(dt)
        spent += dt
  ceiling = matmul_gflops()
  med = {c: float(np.median(s)) for c, s in samples.items()}
  z = b * HEADS
  g0 = tiles.group_rows(z, args.causal, n) if args.mode == "fwd" else z
  bq0, bk0, bqb0, bkb0 = (min(x, n) for x in tiles.default_blocks(z, args.causal, q_len=n, kv_len=n))
  label = lambda c: (f"default ({bq0}x{bk0}:{bqb0}x{bkb0}, forward groups of {g0})"
                     if c == "default" else
                     "xla" if c == "xla" else
                     f"default tiles, forward groups of {c[1]}" if c[0] == "rows" else
                     f"{c[0]}x{c[1]}" + (f":{c[2] or ''}" if c[2] or c[3] else "") +
                     (f"x{c[3]}" if c[3] else ""))
  print(f"# B={b} N={n} {args.mode} causal={int(args.causal)}; f32 matmul {ceiling:.0f} GFLOP/s; "
        f"{jax.devices()[0].device_kind}\n")
  print("| tiles | ms | GFLOP/s | % matmul | vs xla | samples |\n|---|---|---|---|---|---|")
  for c in sorted(cands, key=med.get):
    gf = flops(b, n, args.causal, args.mode) / med[c] / 1e9
    vs = f"{med['xla'] / med[c]:.2f}x" if "xla" in med else "—"
    print(f"| {label(c)} | {med[c] * 1e3:.1f} | {gf:.0f} | {100 * gf / ceiling:.0f}% | {vs} | "
          f"{len(samples[c])} |")


if __name__ == "__main__":
  main()
