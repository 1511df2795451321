"""Reporting half of `experiments.bench_train`: per-config summaries, goals, the markdown table.

A config's record (`summarize`) keeps every timed sample of every variant (`ours`, `peer`,
`ours_real`) next to the medians, so a saved JSON can be re-tabled (`--table`) or re-analysed.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from attn_jax.train.metrics import cpu_model

REAL_GOAL = 0.95   # real-data throughput over in-memory throughput


def summarize(rec: dict) -> dict:
  """The JSON record of a config: samples, median throughputs, ratios, goals."""
  out = {k: v for k, v in rec.items() if k not in ("variants", "units_fn", "prefetch")}
  out["samples_s"] = {v.name: v.samples for v in rec["variants"]}
  out["units_per_step"] = {v.name: v.units for v in rec["variants"]}
  out["cpu_user_sys_s"] = {v.name: v.cpu for v in rec["variants"]}
  out["minor_faults"] = {v.name: v.faults for v in rec["variants"]}
  thr = {v.name: float(np.median(np.asarray(v.units) / np.asarray(v.samples)))
         for v in rec["variants"] if v.samples}
  out["throughput"] = thr
  out["ratio"] = thr["ours"] / thr["peer"] if "ours" in thr and "peer" in thr else None
  out["throughput_per_cpu_s"] = per_cpu_second(out)
  out["real_ratio"] = thr["ours_real"] / thr["ours"] if "ours_real" in thr else None
  out["goal_met"] = None if out["ratio"] is None else bool(out["ratio"] >= rec["goal"])
  out["real_goal_met"] = (None if out["real_ratio"] is None
                          else bool(out["real_ratio"] >= REAL_GOAL))
  return out


def per_cpu_second(rec: dict) -> dict[str, float]:
  """Units per process CPU second (user + sys; totals over the timed steps) of each variant:
  a secondary figure that other processes on the machine disturb less than the wall clock
  does. Variants whose steps took no measurable CPU time (10 ms clock ticks) are left out."""
  out = {}
  for name, cpu in rec["cpu_user_sys_s"].items():
    spent = float(np.sum(cpu))
    if spent > 0:
      out[name] = float(np.sum(rec["units_per_step"][name])) / spent
  return out


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
  return "—" if x is None else fmt.format(x)


def table(results: list[dict]) -> str:
  head = ["config", "units", "ours", "peer", "ours/peer (goal)",
          f"real/in-memory (goal ≥{REAL_GOAL})",
          "compile s ours unrolled / scan (peer)", "XLA temp+out MiB ours / scan / peer",
          "ours/peer per CPU-s", "params ours / peer", "data"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in results:
    thr, c, m, cpu = r["throughput"], r["compile_s"], r["xla_mib"], per_cpu_second(r)
    mark = lambda ok: "met" if ok else "NOT met"
    ratio = (f"{r['ratio']:.2f}x (≥{r['goal']:.1f}: {mark(r['goal_met'])})"
             if r["ratio"] is not None else "—")
    real = (f"{r['real_ratio']:.2f}x ({mark(r['real_goal_met'])})"
            if r["real_ratio"] is not None else "—")
    row = [r["label"], r["units"], _f(thr.get("ours")), _f(thr.get("peer")), ratio, real,
           f"{_f(c.get('ours'))} / {_f(c.get('ours_scan'))} ({_f(c.get('peer'))})",
           f"{_f(m.get('ours'), '{:.0f}')} / {_f(m.get('ours_scan'), '{:.0f}')} / "
           f"{_f(m.get('peer'), '{:.0f}')}",
           f"{cpu['ours'] / cpu['peer']:.2f}x" if {"ours", "peer"} <= set(cpu) else "—",
           f"{r['params']['ours'] / 1e6:.2f}M / {r['params']['peer'] / 1e6:.2f}M", r["data"]]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def machine() -> dict:
  """CPU, cores, jax version, backend, device kind and local date of this process."""
  return {"cpu": cpu_model(), "cores": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def legend(rounds: int) -> str:
  """The paragraph printed above the table: what each column measures."""
  return (f"\nthroughput: median over {rounds} interleaved round(s) of timed steps (after one "
          "warm-up step; compile excluded); ratios side by side in this run. in-memory = one "
          "synthetic batch reused (images) or the pipeline's own batches held on the device "
          "(Transformer); real = Prefetch over the real TrainStream. XLA MiB: temporaries + "
          "outputs by XLA's memory analysis. per CPU-s: units per process CPU second (user + "
          "sys), secondary, less disturbed by other load. Goals: ours/peer ≥ each config's "
          f"goal (1.0; 1.3 at 785 tokens), real/in-memory ≥ {REAL_GOAL}.\n")


def print_saved(saved: dict) -> None:
  """Re-prints the table of a record that `bench_train --out` wrote."""
  m = saved["machine"]
  print(f"# {m['cpu']}, {m['cores']} cores, jax {m['jax']} {m['backend']}, {m['date']}; load "
        f"average {saved['load_average_start'][0]:.2f} at start, "
        f"{saved['load_average_end'][0]:.2f} at end\n")
  print(table(saved["configs"]))
  print(f"\nprocess max RSS {saved['max_rss_mib']:.0f} MiB; command: {saved['command']}")
