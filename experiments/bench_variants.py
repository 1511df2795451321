"""`python -m experiments.bench_attention --variants`: the attention variants' costs.

A causal sliding window (`--window`, default 512) through the blockwise kernel at
N = 4,096 ... 65,536 (`--variant-sizes`, up to `--variant-max-n`), reported as time per
token, which stays flat when the cost is linear in N; and grouped-query attention
(`--gqa-heads` query:kv heads, default 8:2) against MHA at `--gqa-n` (causal,
`F.attention`'s default dispatch): time, and the bytes of K/V, which is what a KV cache
holds. Batch 1, head dim 64, `--dtype`; `--modes`, `--repeats`, `--rounds`,
`--min-seconds` and `--max-seconds` as for the main benchmark.
"""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax import functional as F
from experiments import bench_attention as B


def _time(step, xs: list, args) -> list[float]:
  """Seconds per call after compile: >= --repeats calls and >= --min-seconds, per round."""
  jax.block_until_ready(step(*xs))
  ts = []
  for _ in range(args.rounds):
    spent, i = 0.0, 0
    while (i < args.repeats or spent < args.min_seconds) and not (i and spent > args.max_seconds):
      t0 = time.perf_counter()
      jax.block_until_ready(step(*xs))
      ts.append(time.perf_counter() - t0)
      spent, i = spent + ts[-1], i + 1
  return ts


def run_variants(args) -> list[dict]:
  """--variants: a causal sliding window over N (blockwise kernel) and GQA against MHA."""
  B.DTYPE = jnp.dtype(args.dtype)  # (run as `-m experiments.bench_attention`, B is a copy)
  rows = []
  for n in [n for n in args.variant_sizes if n <= args.variant_max_n]:
    for mode in args.modes:
      f = lambda q, k, v: F.attention(q, k, v, is_causal=True, window=(args.window, 0),
                                      implementation="blockwise")
      ts = _time(B.as_step(f, mode), B.inputs(1, n, mode), args)
      rows.append(dict(kind="window", n=n, mode=mode, window=args.window, samples=ts))
      print(f"window {args.window} N={n:6d} {mode:7s} {np.median(ts) * 1e3:.1f} ms",
            file=sys.stderr, flush=True)
  hq, hkv = (int(x) for x in args.gqa_heads.split(":"))
  n, itemsize = args.gqa_n, jnp.dtype(B.DTYPE).itemsize
  for mode in args.modes:
    for heads_kv in (hq, hkv):
      ks = jax.random.split(jax.random.key(1), 4)
      q = jax.random.normal(ks[0], (1, hq, n, B.HEAD_DIM), B.DTYPE)
      k, v = (jax.random.normal(kk, (1, heads_kv, n, B.HEAD_DIM), B.DTYPE) for kk in ks[1:3])
      xs = [q, k, v] + ([jax.random.normal(ks[3], q.shape, B.DTYPE)] if mode != "fwd" else [])
      f = lambda q, k, v: F.attention(q, k, v, is_causal=True)
      ts = _time(B.as_step(f, mode), xs, args)
      rows.append(dict(kind="gqa", n=n, mode=mode, heads=hq, kv_heads=heads_kv, samples=ts,
                       kv_bytes=2 * heads_kv * n * B.HEAD_DIM * itemsize))
  print(variants_table(rows))
  return rows


def variants_table(rows: list[dict]) -> str:
  """Markdown tables of `run_variants` rows (medians; GQA rows also relative to MHA)."""
  lines = ["| window | N | mode | ms | us / token |", "|---|---|---|---|---|"]
  for r in (r for r in rows if r["kind"] == "window"):
    t = float(np.median(r["samples"]))
    lines.append(f"| {r['window']} | {r['n']} | {r['mode']} | {t * 1e3:.1f} | "
                 f"{t / r['n'] * 1e6:.1f} |")
  lines += ["", "| heads (q / kv) | N | mode | ms | K/V MiB | vs MHA |",
            "|---|---|---|---|---|---|"]
  gqa = [r for r in rows if r["kind"] == "gqa"]
  for r in gqa:
    t = float(np.median(r["samples"]))
    mha = next(float(np.median(m["samples"])) for m in gqa
               if m["mode"] == r["mode"] and m["kv_heads"] == m["heads"])
    lines.append(f"| {r['heads']} / {r['kv_heads']} | {r['n']} | {r['mode']} | {t * 1e3:.1f} | "
                 f"{r['kv_bytes'] / 2**20:.1f} | {t / mha:.2f}x |")
  return "\n".join(lines)
