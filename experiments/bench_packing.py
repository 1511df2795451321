r"""Packed vs padded training batches: target tokens per second on real Multi30k batches.

    python -m experiments.bench_packing                       # Transformer de->en, ~5 min
    python -m experiments.bench_packing --steps 3 --rounds 1 --tiny   # smoke test

Builds configs/multi30k_transformer.py twice through the runner (`loop.setup`): padded
batches (`data.pack=False`, each sentence pair padded to the length buckets 32/48/64) and
packed rows (`data.pack=True`: pairs laid end to end in rows of 64 tokens, segment ids
keep them apart). Each variant's train step is compiled by the runner's strategy on the
pipeline's own batches (held on the device; every bucket shape compiled before timing),
then timed step by step (`jax.block_until_ready`), the variants alternating round by
round. Reports the median time per step, real target tokens per step (non-PAD `tgt_out`)
and their ratio, target tokens/s, and the slot fill rate of each layout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Sequence

import jax
import numpy as np

from attn_jax.train import loop
from attn_jax.train import step as step_lib


def _setup(pack: bool, args):
  from configs import multi30k_transformer
  c = multi30k_transformer.get_config()
  c.data.path, c.data.pack, c.batch_size = args.data, pack, args.batch
  if args.tiny:
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 1, 2, 64
  s = loop.setup(c, "/tmp/unused")
  state = s.init_state()
  train_step = s.strategy.compile_train(step_lib.make_train_step(
      s.model, s.task, s.tx, s.schedule, c.label_smoothing))
  batches = [s.data.train.batch_at(i) for i in range(args.steps)]
  device = [s.strategy.put_batch(b) for b in batches]
  tokens = [int((b["tgt_out"] != 0).sum()) for b in batches]
  slots = [b["tgt_out"].size for b in batches]
  seen = set()
  for b in device:   # compile every shape before the clock runs
    key = tuple(sorted((k, v.shape) for k, v in b.items()))
    if key not in seen:
      seen.add(key)
      state, m = train_step(state, b)
      jax.block_until_ready((state, m))
  return {"state": state, "step": train_step, "batches": device, "tokens": tokens,
          "fill": sum(tokens) / sum(slots), "times": []}


def main(argv: Sequence[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default="../shared/data/multi30k")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--tiny", action="store_true", help="a 1-layer width-32 model (smoke test)")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  runs = {"padded": _setup(False, args), "packed": _setup(True, args)}
  for r in range(args.rounds):
    for name in (("padded", "packed") if r % 2 == 0 else ("packed", "padded")):
      v = runs[name]
      for b in v["batches"]:
        t0 = time.perf_counter()
        v["state"], m = v["step"](v["state"], b)
        jax.block_until_ready((v["state"], m))
        v["times"].append(time.perf_counter() - t0)
  out = {}
  for name, v in runs.items():
    t = statistics.median(v["times"])
    tok = float(np.mean(v["tokens"]))
    out[name] = {"median_step_s": t, "target_tokens_per_step": tok, "tokens_per_s": tok / t,
                 "fill_rate": v["fill"], "timed_steps": len(v["times"])}
  out["speedup_tokens_per_s"] = out["packed"]["tokens_per_s"] / out["padded"]["tokens_per_s"]
  print("| layout | step (ms) | target tokens / step | target tokens / s | slot fill |")
  print("|---|---|---|---|---|")
  for name in ("padded", "packed"):
    o = out[name]
    print(f"| {name} | {1e3 * o['median_step_s']:.0f} | {o['target_tokens_per_step']:.0f} "
          f"| {o['tokens_per_s']:.0f} | {100 * o['fill_rate']:.0f}% |")
  print(f"packed / padded target tokens/s: {out['speedup_tokens_per_s']:.2f}x "
        f"(batch {args.batch} rows, {jax.devices()[0].platform})")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({**out, "args": vars(args)}, f, indent=1)
  return out


if __name__ == "__main__":
  main()
