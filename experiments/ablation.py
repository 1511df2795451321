r"""Channel-attention ablation: none / SE / ECA / CBAM on one recipe, several seeds each.

    python -m experiments.ablation --root ~/attn_jax_runs/ablation --seeds 0,1,2 \
        --overrides=--config.num_steps=1400,--config.eval_every=700
    python -m experiments.ablation --root ~/attn_jax_runs/ablation --summary   # table only
    python -m experiments.ablation --root results/ablation --summary --out docs/ablation.md

Trains `configs/fashion_mnist_resnet.py:<variant>` once per (variant, seed) with
`experiments.train` in `<root>/<variant>_s<seed>` (each run resumable: rerunning the command
skips finished runs and resumes unfinished ones), then prints, per variant, the final test
accuracy of every seed, the mean and sample standard deviation, and whether the variants are
resolved: two variants differ when their mean +- 2 standard errors do not overlap.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from typing import Sequence

VARIANTS = ("none", "se", "eca", "cbam")


def run_dir(root: str, variant: str, seed: int) -> str:
  return os.path.join(root, f"{variant}_s{seed}")


def finished(workdir: str) -> dict | None:
  """run.json of a run that reached its planned steps, else None."""
  path = os.path.join(workdir, "run.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rec = json.load(f)
  return rec if rec.get("step") and rec["step"] >= rec["config"]["num_steps"] else None


def summarize(root: str, variants: Sequence[str], seeds: Sequence[int]) -> dict:
  """{variant: {'seeds': {seed: accuracy %}, 'mean', 'std', 'sem'}} from finished runs, plus
  'resolved': [(a, b, bool)] for every pair with >= 2 seeds each."""
  out: dict = {}
  for v in variants:
    accs = {}
    for s in seeds:
      rec = finished(run_dir(root, v, s))
      if rec is not None and "eval_accuracy" in rec.get("eval", {}):
        accs[s] = 100 * rec["eval"]["eval_accuracy"]
    vals = list(accs.values())
    std = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    out[v] = {"seeds": accs, "mean": statistics.mean(vals) if vals else float("nan"),
              "std": std, "sem": std / math.sqrt(len(vals)) if len(vals) > 1 else float("nan")}
  pairs = []
  names = [v for v in variants if len(out[v]["seeds"]) > 1]
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      lo_a, hi_a = out[a]["mean"] - 2 * out[a]["sem"], out[a]["mean"] + 2 * out[a]["sem"]
      lo_b, hi_b = out[b]["mean"] - 2 * out[b]["sem"], out[b]["mean"] + 2 * out[b]["sem"]
      pairs.append((a, b, hi_a < lo_b or hi_b < lo_a))
  out["resolved"] = pairs
  return out


def table(summary: dict, variants: Sequence[str]) -> str:
  lines = ["| attention | test accuracy % per seed | mean | std |", "|---|---|---|---|"]
  for v in variants:
    r = summary[v]
    per = ", ".join(f"{a:.2f}" for _, a in sorted(r["seeds"].items())) or "—"
    lines.append(f"| {v} | {per} | {r['mean']:.2f} | {r['std']:.2f} |")
  res = [f"{a} vs {b}: {'resolved' if ok else 'not resolved'}" for a, b, ok in summary["resolved"]]
  return "\n".join(lines) + ("\n\n" + "; ".join(res) + "." if res else "") + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True, help="parent folder of the run directories")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--config", default="configs/fashion_mnist_resnet.py")
  p.add_argument("--overrides", default="", help="comma-separated --config.<key>=<value> flags")
  p.add_argument("--summary", action="store_true", help="only print the table")
  p.add_argument("--out", default="", help="also write the table to this markdown file")
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  extra = [o for o in args.overrides.split(",") if o]
  if not args.summary:
    for s in seeds:          # seed-major: every variant gets seed 0 before any gets seed 1
      for v in variants:
        w = run_dir(args.root, v, s)
        if finished(w):
          continue
        cmd = [sys.executable, "-m", "experiments.train", f"--config={args.config}:{v}",
               f"--workdir={w}", f"--config.seed={s}", "--config.progress=off", *extra]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
  summary = summarize(args.root, variants, seeds)
  text = table(summary, variants)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return summary


if __name__ == "__main__":
  main()
