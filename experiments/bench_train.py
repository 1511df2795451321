"""Train-step throughput: the project's models and runner step against plain Flax peers.

Each config trains one model three ways, interleaved round by round in one process
(each variant takes its turn in every round, the order alternating):

- `ours`: the project's model (`attn_jax.vision.vit` / `swin`, `attn_jax.seq.transformer`)
  stepped by the project's `make_train_step`, compiled by the runner's `JitStrategy`
  (state donated), on an in-memory batch (images: one synthetic batch reused; the
  Transformer: real Multi30k batches held on the device, the same ones the pipeline yields);
- `peer`: a plain Flax model written here the way a user would write it, with
  `flax.linen.MultiHeadDotProductAttention` (same sizes, parameter counts within a few
  %), the same optax optimizer object, a hand-written `jax.value_and_grad` + `jax.jit`
  step with donated state, on the same in-memory batches as `ours`;
- `ours_real`: `ours` fed by the project's input pipeline (`Prefetch` over the real
  `TrainStream`, put on the device by worker threads): CIFAR-10 for the 32 px models,
  Multi30k for the Transformer. The 224 px configs run synthetic batches only.

Throughput is images/s (vision) or target tokens/s (non-pad `tgt_out` tokens, the
Transformer): each timed step is `batch -> step -> jax.block_until_ready(state, metrics)`,
the figure is the median over the timed steps of every round (one untimed warm-up step per
variant first; compile time excluded, every executable is compiled ahead of time). Ratios
are medians measured side by side in this run. Also per config: lower + compile time of
`ours` unrolled and with `scan_layers=True` (ViT configs by default; `--scan-compile all`
adds Swin and the Transformer), XLA's memory analysis of each compiled step
(temporaries + outputs, MiB) and the process max RSS.

Goals (marked met / not met in the table):
- ours >= 1.0x the plain peer at every config, and >= 1.3x at 785 tokens (ViT-Ti/8, 224 px);
- real-data throughput (`ours_real`) >= 0.95x the in-memory one (`ours`).

  python -m experiments.bench_train --out /root/attn_jax_runs/bench_train.json   # ~15 min
  python -m experiments.bench_train --configs vit_s4 --steps 1 --rounds 1        # smoke test
  python -m experiments.bench_train --tiny --configs vit_s4,transformer --steps 1 --rounds 1
  python -m experiments.bench_train --table /root/attn_jax_runs/bench_train.json  # re-print

Configs (`--configs`): vit_ti16 (ViT-Ti/16, 224 px, batch 32, 197 tokens), vit_s4 (ViT-S/4,
32 px, batch 128, CIFAR-10), vit_ti8 (ViT-Ti/8, 224 px, batch 8, 785 tokens), swin_t
(Swin-T/p2w4, 32 px, batch 64, CIFAR-10), transformer (3+3 layers, width 256, 8 heads, MLP
512, batch 128, Multi30k de->en; synthetic batches of the same shapes, with a warning, when
../shared/data/multi30k is absent). Dropout and stochastic depth: 0 for the vision models
(the variants' defaults; Swin's drop_path_rate is set to 0 for both), 0.1 for the
Transformer (its config), in ours and the peer alike. Label smoothing 0.1, optimizer of
configs/cifar10_vit.py (AdamW, clipping) or configs/multi30k_transformer.py (Adam).
Writes a markdown table to stdout and `--out` (JSON with every sample). The configs, models and
batches are in `experiments/bench_train_cases.py`, the summaries and the table in
`experiments/bench_train_report.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from attn_jax.data import pipeline as P
from attn_jax.train import optim
from attn_jax.train import step as step_lib
from attn_jax.train.metrics import command_line
from attn_jax.train.parallel import JitStrategy
from experiments.bench_peers import make_peer_step
from experiments.bench_train_cases import (CASES, M30K_VOCAB, Batch, Case, build_models,
                                           project_config, real_stream, synthetic_batches,
                                           units_of)
from experiments.bench_train_report import legend, machine, print_saved, summarize, table


# ----- compiled steps and timing of one config --------------------------------------------------


def shape_key(batch: Batch) -> tuple:
  return tuple((k, tuple(np.shape(v))) for k, v in sorted(batch.items()))


def memory_mib(exe) -> float | None:
  """XLA's memory analysis of a compiled step: temporaries + outputs, MiB (None if absent)."""
  try:
    ma = exe.memory_analysis()
  except Exception:  # noqa: BLE001 -- a backend without the analysis
    return None
  if ma is None:
    return None
  return (ma.temp_size_in_bytes + ma.output_size_in_bytes) / 2**20


def compile_for(fn, state, batches: Sequence[Batch]) -> tuple[dict, float, float | None]:
  """Ahead-of-time executables for every batch shape -> ({shape: exe}, lower + compile s of
  the first shape, XLA MiB (max over shapes))."""
  exes, first_s, mib = {}, None, None
  for b in batches:
    key = shape_key(b)
    if key in exes:
      continue
    t0 = time.perf_counter()
    exes[key] = exe = fn.lower(state, b).compile()
    dt = time.perf_counter() - t0
    first_s = dt if first_s is None else first_s
    m = memory_mib(exe)
    mib = m if mib is None else max(mib, m or 0.0)
  return exes, first_s, mib


@dataclasses.dataclass
class Variant:
  """One way of stepping a config: its executables, a mutable state slot, its feed."""
  name: str
  exes: dict
  slot: dict                        # {'state': train state} (shared by ours and ours_real)
  feed: Callable[[int], Batch]      # step index -> device batch
  samples: list = dataclasses.field(default_factory=list)   # seconds per timed step
  units: list = dataclasses.field(default_factory=list)     # images / tokens of that step
  cpu: list = dataclasses.field(default_factory=list)       # process (user, sys) s per step
  faults: list = dataclasses.field(default_factory=list)    # minor page faults per step
  steps_done: int = 0

  def step(self, k: int) -> tuple[float, tuple[float, float], int]:
    """Runs step k (feed included) -> (wall s, process (user, sys) CPU s, minor faults)."""
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), os.times()
    t0 = time.perf_counter()
    batch = self.feed(k)
    state, metrics = self.exes[shape_key(batch)](self.slot["state"], batch)
    jax.block_until_ready((state, metrics))
    dt = time.perf_counter() - t0
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), os.times()
    self.slot["state"] = state
    return dt, (c1.user - c0.user, c1.system - c0.system), r1.ru_minflt - r0.ru_minflt


def max_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prepare(case: Case, args, strategy: JitStrategy) -> dict:
  """Models, data, states and compiled steps of one config -> its record (variants inside)."""
  steps = args.steps or case.steps
  batch = args.batch_override or (4 if args.tiny else case.batch)
  count = 1 + args.rounds * steps            # batches each variant consumes (warm-up + timed)
  stream, info, data_note = real_stream(case, batch, args.real)
  vocab = ((info["src_vocab"], info["tgt_vocab"]) if "src_vocab" in info
           else ((100, 90) if args.tiny else M30K_VOCAB))
  ours_of, peer_model, task = build_models(case, args.tiny, vocab)
  cfg = project_config(case, batch)
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.num_steps)
  ls = cfg.label_smoothing
  # in-memory host batches: images one synthetic batch reused; seq2seq the pipeline's batches
  if case.kind == "transformer":
    host = ([stream.batch_at(k) for k in range(count)] if stream is not None else
            synthetic_batches(case, batch, count, args.tiny, vocab))
  else:
    host = synthetic_batches(case, batch, 1, args.tiny, vocab)
  dev = [strategy.put_batch(b) for b in host]
  mem_feed = lambda k: dev[k % len(dev)]
  units = lambda k: units_of(case, host[k % len(host)])

  label = f"{case.label} b{batch}" + (" (tiny)" if args.tiny else "")
  rec: dict[str, Any] = {"name": case.name, "label": label, "kind": case.kind,
                         "batch": batch, "steps": steps, "data": data_note, "goal": case.goal,
                         "units": "tokens/s" if case.kind == "transformer" else "images/s",
                         "compile_s": {}, "xla_mib": {}, "shapes": len({shape_key(b)
                                                                     for b in host})}
  ours = ours_of(False)
  init_fn = step_lib.make_init_fn(ours, task, tx, host[0], seed=0)
  t0 = time.perf_counter()
  ours_state = strategy.init_state(init_fn)
  jax.block_until_ready(ours_state)
  rec["init_s"] = {"ours": time.perf_counter() - t0}
  ours_fn = strategy.compile_train(step_lib.make_train_step(ours, task, tx, schedule, ls))
  ours_exes, rec["compile_s"]["ours"], rec["xla_mib"]["ours"] = compile_for(ours_fn, ours_state,
                                                                             dev)
  log(f"{case.name}: ours compiled in {rec['compile_s']['ours']:.1f}s "
      f"({rec['shapes']} shape(s)), XLA {rec['xla_mib']['ours'] or 0:.0f} MiB")

  want_scan = args.scan_compile == "all" or (args.scan_compile == "vit" and case.kind == "vit")
  if want_scan:
    scanned = ours_of(True)
    abstract = strategy.abstract_state(step_lib.make_init_fn(scanned, task, tx, host[0], seed=0))
    fn = strategy.compile_train(step_lib.make_train_step(scanned, task, tx, schedule, ls))
    _, rec["compile_s"]["ours_scan"], rec["xla_mib"]["ours_scan"] = compile_for(fn, abstract,
                                                                                dev[:1])
    log(f"{case.name}: ours scan_layers=True compiled in {rec['compile_s']['ours_scan']:.1f}s, "
        f"XLA {rec['xla_mib']['ours_scan'] or 0:.0f} MiB")

  sample = {k: jnp.zeros((1,) + v.shape[1:], v.dtype) for k, v in host[0].items()}
  peer_inputs = ((sample["src"], sample["tgt_in"]) if case.kind == "transformer"
                 else (sample["image"],))

  def peer_init() -> train_state.TrainState:
    params = peer_model.init({"params": jax.random.PRNGKey(0)}, *peer_inputs)["params"]
    return train_state.TrainState.create(apply_fn=peer_model.apply, params=params, tx=tx)

  t0 = time.perf_counter()
  peer_state = jax.jit(peer_init)()
  jax.block_until_ready(peer_state)
  rec["init_s"]["peer"] = time.perf_counter() - t0
  peer_fn = make_peer_step(peer_model, case.kind, case.num_classes, ls)
  peer_exes, rec["compile_s"]["peer"], rec["xla_mib"]["peer"] = compile_for(peer_fn, peer_state,
                                                                             dev)
  rec["params"] = {"ours": step_lib.count_params(ours_state.params),
                   "peer": step_lib.count_params(peer_state.params)}
  diff = rec["params"]["peer"] / rec["params"]["ours"] - 1
  log(f"{case.name}: peer compiled in {rec['compile_s']['peer']:.1f}s, XLA "
      f"{rec['xla_mib']['peer'] or 0:.0f} MiB; params ours {rec['params']['ours']:,} peer "
      f"{rec['params']['peer']:,} ({100 * diff:+.2f}%)")
  if abs(diff) > 0.03:
    log(f"WARNING: {case.name}: parameter counts differ by {100 * diff:+.1f}%")

  ours_slot = {"state": ours_state}
  variants = [Variant("ours", ours_exes, ours_slot, mem_feed),
              Variant("peer", peer_exes, {"state": peer_state}, mem_feed)]
  rec["prefetch"] = None
  if stream is not None:
    pf = P.Prefetch(stream, strategy.put_batch, cfg.data.prefetch)
    rec["prefetch"] = pf
    rec["prefetch_depth"] = cfg.data.prefetch
    if case.kind != "transformer":  # one real batch's shape: the same executable
      real0 = stream.batch_at(0)
      assert shape_key(real0) == shape_key(host[0]), (shape_key(real0), shape_key(host[0]))
    variants.append(Variant("ours_real", ours_exes, ours_slot, lambda k: next(pf)))
  rec["variants"] = variants
  rec["units_fn"] = units
  rec["max_rss_mib_after_compile"] = max_rss_mib()
  return rec


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def run_rounds(recs: list[dict], rounds: int) -> None:
  """Every variant of every config takes `steps` timed steps per round (order alternating),
  after one untimed warm-up step in round 0."""
  for r in range(rounds):
    for rec in recs:
      vs = rec["variants"] if r % 2 == 0 else rec["variants"][::-1]
      for v in vs:
        if r == 0:  # warm-up: first execution (allocations, thread pools) is not timed
          v.step(v.steps_done)
          v.steps_done += 1
        for _ in range(rec["steps"]):
          dt, cpu, faults = v.step(v.steps_done)
          v.samples.append(dt)
          v.cpu.append(cpu)
          v.faults.append(faults)
          v.units.append(rec["units_fn"](v.steps_done))
          v.steps_done += 1
      log(f"round {r} {rec['name']}: " + ", ".join(
          f"{v.name}={np.median(np.asarray(v.units) / np.asarray(v.samples)):.1f} "
          f"{rec['units']}" for v in rec["variants"]))


def main(argv: Sequence[str] | None = None) -> dict:
  """Runs the benchmark; returns the JSON record (also written to `--out`)."""
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", type=lambda s: [x for x in s.split(",") if x],
                 default=list(CASES), help=f"subset of {','.join(CASES)}")
  p.add_argument("--steps", type=int, default=0,
                 help="timed steps per variant and round (0: each config's default)")
  p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
  p.add_argument("--no-real", dest="real", action="store_false",
                 help="skip the real input pipeline (in-memory batches only)")
  p.add_argument("--scan-compile", choices=["none", "vit", "all"], default="vit",
                 help="also compile ours with scan_layers=True: ViT configs (default) or all")
  p.add_argument("--tiny", action="store_true", help="tiny models, batch 4 (checks the script)")
  p.add_argument("--batch", dest="batch_override", type=int, default=0,
                 help="override every config's batch size (0: the config's)")
  p.add_argument("--out", default="runs/bench_train.json")
  p.add_argument("--table", default=None, metavar="JSON",
                 help="print the table of a saved run (--out of an earlier run) and exit")
  args = p.parse_args(argv)
  if args.table:
    with open(args.table) as fh:
      saved = json.load(fh)
    print_saved(saved)
    return saved
  unknown = [c for c in args.configs if c not in CASES]
  if unknown:
    p.error(f"unknown config(s) {unknown}; known: {list(CASES)}")
  command = command_line("experiments.bench_train", argv)
  info = machine()
  load_start = os.getloadavg()
  print(f"# {info['cpu']}, {info['cores']} cores, jax {info['jax']} {info['backend']} "
        f"({info['device']}), float32, {info['date']}, load average at start "
        f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
  t_start = time.time()
  strategy = JitStrategy()
  recs = [prepare(CASES[name], args, strategy) for name in args.configs]
  t_compiled = time.time()
  try:
    run_rounds(recs, args.rounds)
  finally:
    for rec in recs:
      if rec["prefetch"] is not None:
        rec["prefetch"].close()
  results = [summarize(r) for r in recs]
  load_end = os.getloadavg()
  rss = max_rss_mib()
  print(legend(args.rounds))
  print(table(results))
  print(f"\nprocess max RSS {rss:.0f} MiB; load average at end {load_end[0]:.2f} "
        f"{load_end[1]:.2f} {load_end[2]:.2f}; setup + compile {t_compiled - t_start:.0f} s, "
        f"timed rounds {time.time() - t_compiled:.0f} s, total {time.time() - t_start:.0f} s")
  print(f"command: {command}", flush=True)
  record = {"machine": info, "command": command, "rounds": args.rounds, "tiny": args.tiny,
            "load_average_start": load_start, "load_average_end": load_end,
            "max_rss_mib": rss, "total_s": time.time() - t_start, "configs": results}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump(record, fh, indent=1)
  return record


if __name__ == "__main__":
  main()
