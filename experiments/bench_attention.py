"""Side-by-side attention benchmark: the project's default and blockwise kernel vs its peers.

Peers: `default` (`F.attention`, implementation=None: what every module runs),
`blockwise` (`F.attention(implementation='blockwise')`), `xla`
(`jax.nn.dot_product_attention`), `flax` (`flax.linen.dot_product_attention`) and
`naive` (einsum, softmax, einsum); `reference` (the three-stage jnp path) on request.
Layout: batch B, 8 heads, head dim 64, f32 (or `--dtype`).

Per cell (batch, N, causal, mode in fwd / fwd+bwd) it reports the median time
after compile (`block_until_ready`) over `--repeats` calls (more for short cells, up to
`--min-seconds` per implementation and round) in each of `--rounds`
interleaved rounds (each implementation takes its turn in every round, the order
alternating), achieved
GFLOP/s (forward 4*B*H*N^2*D, halved when causal; forward+backward 3.5x forward),
the fraction of the f32 matmul rate measured at the start, XLA's memory
analysis of the compiled step (temporaries + outputs) and each peer's time over
the default's. Dense peers run only up to `--dense-max-n` / `--dense-max-n-bwd` (they
need B*H*N^2 floats); batch 4 only up to N = 4,096 (`--max-n`).
`--rss` adds max-RSS measurements of fresh processes (`impl:N:mode`). The table also
counts minor page faults per call (`ru_minflt`): XLA:CPU takes every large buffer fresh
from the OS on each call, and on the VM of docs/performance.md#page-faults (2026-11-21) a
first touch costs ~1 us per 4 KiB page, so the dense peers spend about half their time
faulting. `--malloc keep` re-runs the benchmark in a process whose glibc allocator keeps
freed memory (`MALLOC_KEEP`), which removes those faults for every implementation alike
(docs/performance.md#page-faults).

  python -m experiments.bench_attention                      # the full run (~25 min quiet)
  python -m experiments.bench_attention --sizes 256,512 --batches 1 --rss ''   # smoke test
  python -m experiments.bench_attention --malloc keep --sizes 1024,4096 --batches 1 --rss ''
  python -m experiments.bench_attention --variants            # window 512 over N; GQA vs MHA
  python -m experiments.bench_attention --variants --variant-max-n 65536   # the long sizes
Writes a markdown table to stdout and `--out` (JSON with every sample).

`--variants` measures the attention variants instead: a causal sliding window
(`--window`, default 512) through the blockwise kernel at N = 4,096 ... 65,536 (up to
`--variant-max-n`, 16,384 by default so that a busy CPU finishes in minutes), reported as
time per token (flat when the cost is linear in N), and grouped-query attention
(`--gqa-heads` query:kv heads, default 8:2) against MHA at `--gqa-n`: time and the bytes
of K/V (what a KV cache holds).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attn_jax import functional as F
from attn_jax.train.metrics import command_line, cpu_model

HEADS, HEAD_DIM = 8, 64
PEERS = ("default", "blockwise", "xla", "flax", "naive")  # also 'reference' with --peers

DENSE = ("xla", "flax", "naive")


def _causal(n):
  return jnp.tril(jnp.ones((n, n), bool))


def make_fn(impl: str, causal: bool):
  """attention(q, k, v) -> out on [B, H, N, D] inputs (peers transpose inside; O(N D), negligible)."""
  t = lambda x: jnp.swapaxes(x, 1, 2)  # [B, H, N, D] <-> [B, N, H, D]
  if impl == "default":
    return lambda q, k, v: F.attention(q, k, v, is_causal=causal)
  if impl in ("blockwise", "reference"):
    return lambda q, k, v: F.attention(q, k, v, is_causal=causal, implementation=impl)
  if impl == "xla":
    return lambda q, k, v: t(jax.nn.dot_product_attention(t(q), t(k), t(v), is_causal=causal,
                                                          implementation="xla"))
  if impl == "flax":
    return lambda q, k, v: t(nn.dot_product_attention(
        t(q), t(k), t(v), mask=_causal(q.shape[2]) if causal else None, deterministic=True))
  if impl == "naive":
    def naive(q, k, v):
      s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
      if causal:
        s = jnp.where(_causal(q.shape[2]), s, -1e30)
      return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)
    return naive
  raise ValueError(impl)


def make_step(impl: str, causal: bool, mode: str):
  return as_step(make_fn(impl, causal), mode)


def as_step(f, mode: str):
  """jit of f(q, k, v) ('fwd'), or of the gradients of <f(q, k, v), g> in q, k, v ('fwdbwd')."""
  if mode == "fwd":
    return jax.jit(f)
  # forward+backward: gradients of <out, g> with respect to q, k, v
  return jax.jit(jax.grad(lambda q, k, v, g: jnp.vdot(f(q, k, v), g), argnums=(0, 1, 2)))


DTYPE = jnp.float32  # --dtype

# glibc settings that keep freed memory in the process (glibc reads them at process start,
# hence the child process): one arena, so XLA's worker threads do not allocate from per-thread heaps that
# glibc trims; no mmap for large blocks; never trim; grow the heap in 1 GiB steps.
MALLOC_KEEP = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
               "MALLOC_TRIM_THRESHOLD_": str(2**36), "MALLOC_TOP_PAD_": str(2**30)}


def malloc_mode() -> str:
  """'keep' if this process runs with `MALLOC_KEEP`, else 'default'."""
  return "keep" if all(os.environ.get(k) == v for k, v in MALLOC_KEEP.items()) else "default"


def minor_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def inputs(b: int, n: int, mode: str, seed: int = 0):
  ks = jax.random.split(jax.random.key(seed), 4)
  shape = (b, HEADS, n, HEAD_DIM)
  xs = [jax.random.normal(kk, shape, DTYPE) for kk in ks[: 3 if mode == "fwd" else 4]]
  return jax.block_until_ready(xs)


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
  """The machine's matmul rate (in --dtype): median of `repeats` n x n jnp.dot after compile."""
  a = jax.random.normal(jax.random.key(0), (n, n), DTYPE)
  f = jax.jit(jnp.dot)
  f(a, a).block_until_ready()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    ts.append(time.perf_counter() - t0)
  return 2 * n**3 / float(np.median(ts)) / 1e9


def flops(b: int, n: int, causal: bool, mode: str) -> float:
  fwd = 4 * b * HEADS * n * n * HEAD_DIM * (0.5 if causal else 1.0)
  return fwd if mode == "fwd" else 3.5 * fwd


def default_impl(b: int, n: int) -> str:
  q = jax.ShapeDtypeStruct((b, HEADS, n, HEAD_DIM), DTYPE)
  return F.select_implementation(q, q, q)


def rss_child(impl: str, n: int, mode: str, causal: bool) -> None:
  """Run one step in this (fresh) process and print its max RSS as JSON."""
  step = make_step(impl, causal, mode)
  xs = inputs(1, n, mode)
  t0 = time.perf_counter()
  jax.block_until_ready(step(*xs))
  wall = time.perf_counter() - t0
  # VmHWM: this process's peak RSS. (getrusage's ru_maxrss survives exec, so a child
  # would report its parent's peak if that was higher.)
  with open("/proc/self/status") as fh:
    hwm = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:"))
  print(json.dumps({"impl": impl, "n": n, "mode": mode, "causal": causal,
                    "wall_s_incl_compile": wall, "max_rss_mib": hwm / 1024}))


def run_rss(spec: str, causal: bool) -> dict:
  impl, n, mode = spec.split(":")
  cmd = [sys.executable, "-m", "experiments.bench_attention", "--rss-child", spec]
  cmd += ["--causal", "1" if causal else "0", "--dtype", jnp.dtype(DTYPE).name]
  p = subprocess.run(cmd, capture_output=True, text=True)
  if p.returncode != 0:
    return {"impl": impl, "n": int(n), "mode": mode, "error": p.stderr.strip()[-300:]}
  return json.loads(p.stdout.strip().splitlines()[-1])


def bench(args) -> dict:
  cells = []
  for causal in args.causal:
    for mode in args.modes:
      for b in args.batches:
        for n in args.sizes:
          if n > args.max_n.get(b, max(args.sizes)):
            continue
          impls = [p for p in args.peers
                   if not (p in DENSE and n > (args.dense_max_n if mode == "fwd"
                                               else args.dense_max_n_bwd))]
          if "default" in impls and "blockwise" in impls and default_impl(b, n) == "blockwise":
            impls.remove("default")  # the same kernel: measured once, as 'blockwise'
          cells.append(dict(b=b, n=n, causal=causal, mode=mode, impls=impls, samples={},
                            faults={}, xla_mib={}, default=default_impl(b, n)))
  compiled = {}
  for c in cells:  # compile everything first: compile time is excluded
    for impl in c["impls"]:
      xs = inputs(c["b"], c["n"], c["mode"])
      t0 = time.perf_counter()
      compiled[(id(c), impl)] = exe = make_step(impl, c["causal"], c["mode"]).lower(*xs).compile()
      ma = exe.memory_analysis()  # XLA's own count: temporaries + outputs (a lower bound)
      c["xla_mib"][impl] = (ma.temp_size_in_bytes + ma.output_size_in_bytes) / 2**20
      print(f"compiled {impl:9s} B={c['b']} N={c['n']:6d} {c['mode']:7s} causal={c['causal']:d} "
            f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
      del xs
  for r in range(args.rounds):
    for c in cells:
      xs = inputs(c["b"], c["n"], c["mode"], seed=r)
      order = c["impls"] if r % 2 == 0 else c["impls"][::-1]  # alternate who goes first
      for impl in order:
        step = compiled[(id(c), impl)]
        if r == 0 and c["n"] <= 8192:  # warm-up (long cells: the first call's overhead is noise)
          jax.block_until_ready(step(*xs))
        spent, i, f0 = 0.0, 0, minor_faults()
        # >= --repeats calls and >= --min-seconds (short cells: many calls, a stable median),
        # but stop after --max-seconds (long cells: fewer repeats; rounds still interleave).
        while (i < args.repeats or spent < args.min_seconds) and not (i and spent > args.max_seconds):
          t0 = time.perf_counter()
          jax.block_until_ready(step(*xs))
          dt = time.perf_counter() - t0
          c["samples"].setdefault(impl, []).append(dt)
          spent, i = spent + dt, i + 1
        c["faults"].setdefault(impl, []).append((minor_faults() - f0) / i)  # per call
      print(f"round {r} B={c['b']} N={c['n']:6d} {c['mode']:7s} causal={c['causal']:d}: " +
            ", ".join(f"{i}={np.median(c['samples'][i]) * 1e3:.1f}ms" for i in c["impls"]),
            file=sys.stderr, flush=True)
      del xs
  return cells


def table(cells, ceiling: float) -> str:
  peers = [p for p in PEERS + ("reference",) if p not in ("default", "blockwise")
           and any(p in c["samples"] for c in cells)]
  head = ["mode", "causal", "B", "N", "default picks", "ours ms", "GFLOP/s", "% matmul",
          "ours XLA MiB", "ours faults/call"] + [f"{p} ms (x / x at matmul rate)" for p in peers] + [
          "vs best peer", "best peer XLA MiB", "best peer faults/call"]
  faults = lambda c, i: (f"{np.median(c['faults'][i]):.0f}" if c.get("faults", {}).get(i)
                         else "—")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for c in cells:
    med = {i: float(np.median(s)) for i, s in c["samples"].items()}
    ours = "default" if "default" in med else "blockwise"
    if ours not in med:
      continue
    t = med[ours]
    gf = flops(c["b"], c["n"], c["causal"], c["mode"]) / t / 1e9
    row = [c["mode"], "yes" if c["causal"] else "no", c["b"], c["n"], c["default"],
           f"{t * 1e3:.1f}", f"{gf:.0f}", f"{100 * gf / ceiling:.0f}%", f"{c['xla_mib'][ours]:.0f}",
           faults(c, ours)]
    at_ceiling = ceiling * 1e9 / flops(c["b"], c["n"], c["causal"], c["mode"])  # calls/s
    for p in peers:  # (ours, and what a kernel running at the matmul rate would reach)
      row.append(f"{med[p] * 1e3:.1f} ({med[p] / t:.2f}x / {med[p] * at_ceiling:.2f}x)"
                 if p in med else "—")
    dense = [p for p in peers if p in med]
    best = min(dense, key=med.get) if dense else None
    row.append(f"{med[best] / t:.2f}x ({best})" if best else "—")
    row.append(f"{c['xla_mib'][best]:.0f}" if best else "—")
    row.append(faults(c, best) if best else "—")
    if "default" in med and "blockwise" in med:
      row[4] += f" (blockwise {med['blockwise'] * 1e3:.1f} ms)"
    lines.append("| " + " | ".join(map(str, row)) + " |")
  return "\n".join(lines)


def _ints(s):
  return [int(x) for x in s.split(",") if x]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", type=_ints, default=_ints("256,512,1024,2048,4096,8192,16384,32768"))
  p.add_argument("--batches", type=_ints, default=[1, 4])
  p.add_argument("--max-n", type=lambda s: {int(a): int(b) for a, b in
                                           (x.split(":") for x in s.split(",") if x)},
                 default={4: 4096}, help="largest N per batch size, B:N,... (default 4:4096)")
  p.add_argument("--peers", type=lambda s: s.split(","), default=list(PEERS))
  p.add_argument("--modes", type=lambda s: s.split(","), default=["fwd", "fwdbwd"])
  p.add_argument("--causal", type=lambda s: [bool(int(x)) for x in s.split(",")], default=[False, True])
  p.add_argument("--dense-max-n", type=int, default=8192, help="largest N for dense peers, forward")
  p.add_argument("--dense-max-n-bwd", type=int, default=4096,
                 help="largest N for dense peers, forward+backward")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per implementation per round")
  p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
  p.add_argument("--min-seconds", type=float, default=0.3,
                 help="keep repeating a short cell within a round until it took this long")
  p.add_argument("--max-seconds", type=float, default=4.0,
                 help="stop repeating within a round once a cell took this long (>= 1 call)")
  p.add_argument("--rss", type=lambda s: [x for x in s.split(",") if x],
                 default=["blockwise:65536:fwdbwd", "blockwise:8192:fwd", "xla:8192:fwd",
                          "flax:8192:fwd", "naive:8192:fwd"],
                 help="fresh-process max-RSS runs, impl:N:mode (batch 1, non-causal)")
  p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--table", default=None, metavar="JSON",
                 help="print the table of a saved run (--out of an earlier run) and exit")
  p.add_argument("--ceiling-n", type=int, default=4096, help="matmul size for the ceiling")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
  p.add_argument("--out", default="runs/bench_attention.json")
  p.add_argument("--malloc", choices=["default", "keep"], default="default",
                 help="keep: run in a child process with MALLOC_KEEP (no page faults on reuse)")
  p.add_argument("--variants", action="store_true",
                 help="measure the variants (sliding window over N, GQA vs MHA) instead")
  p.add_argument("--variant-sizes", type=_ints, default=_ints("4096,8192,16384,32768,65536"))
  p.add_argument("--variant-max-n", type=int, default=16384,
                 help="largest N of --variant-sizes to run (65536 for the whole sweep)")
  p.add_argument("--window", type=int, default=512, help="left window of --variants")
  p.add_argument("--gqa-n", type=int, default=4096, help="sequence length of the GQA cells")
  p.add_argument("--gqa-heads", default="8:2", help="query:kv heads of the GQA cells")
  args = p.parse_args(argv)
  if args.table:
    with open(args.table) as fh:
      saved = json.load(fh)
    print(f"# {saved['cpu']}, jax {saved['jax']}, {saved['dtype']}, matmul "
          f"{saved['matmul_gflops'][0]:.0f} GFLOP/s, malloc {saved.get('malloc', 'default')}\n")
    print(table(saved["cells"], saved["matmul_gflops"][0]))
    return saved["cells"]
  if args.malloc == "keep" and malloc_mode() != "keep":
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = [sys.executable, "-m", "experiments.bench_attention", *argv]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # finds experiments/
    path = os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)
    subprocess.run(cmd, env={**os.environ, **MALLOC_KEEP, "PYTHONPATH": path}, check=True)
    with open(args.out) as fh:
      return json.load(fh)["cells"]
  global DTYPE
  DTYPE = jnp.dtype(args.dtype)
  if args.rss_child:
    impl, n, mode = args.rss_child.split(":")
    return rss_child(impl, int(n), mode, args.causal[0])
  if args.variants:
    from experiments import bench_variants  # imported here: it builds on this module
    rows = bench_variants.run_variants(args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
      json.dump({"jax": jax.__version__, "dtype": args.dtype, "variants": rows}, fh, indent=1)
    return rows

  t_start = time.time()
  ceiling = matmul_gflops(args.ceiling_n)
  cpu = cpu_model()
  print(f"# {cpu}, {os.cpu_count()} cores, jax {jax.__version__} {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), {args.dtype}, matmul (4096^2 jnp.dot) "
        f"{ceiling:.0f} GFLOP/s, malloc {malloc_mode()}", flush=True)
  cells = bench(args)
  ceiling_end = matmul_gflops(args.ceiling_n)
  rss = [run_rss(s, False) for s in args.rss]
  print(f"\n{args.dtype} matmul ceiling: {ceiling:.0f} GFLOP/s at start, {ceiling_end:.0f} at "
        "end; ratios (x) are peer time / ours; XLA MiB = temporaries + outputs by XLA's memory "
        "analysis (a lower bound; the fresh-process max RSS below is the real peak).\n")
  if cells:
    print(table(cells, ceiling))
  if rss:
    print("\n| fresh process | N | mode | max RSS MiB | wall s (incl. compile) |\n|---|---|---|---|---|")
    for r in rss:
      err = f" error: {r['error']}" if "error" in r else ""
      print(f"| {r['impl']} | {r['n']} | {r['mode']} | {r.get('max_rss_mib', float('nan')):.0f} | "
            f"{r.get('wall_s_incl_compile', float('nan')):.1f} |{err}")
  print(f"\ntotal {time.time() - t_start:.0f} s; command: "
        f"{command_line('experiments.bench_attention', argv)}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump({"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "dtype": args.dtype,
               "device": jax.devices()[0].device_kind, "matmul_gflops": [ceiling, ceiling_end],
               "malloc": malloc_mode(),
               "rss": rss, "cells": cells}, fh, indent=1)
  return cells


if __name__ == "__main__":
  main()
