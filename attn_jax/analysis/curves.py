"""Learning curves of a run: `metrics.jsonl` in, one PNG out.

`read_curves` turns the lines the training loop logs into arrays: train loss and the
validation metric against steps and against training wall time. The loop logs
`steps_per_sec` with every train line, so the wall time at step s is the sum of
(steps since the previous line) / steps_per_sec up to s — evaluation and checkpoint time
are not counted. `plot_curves` draws the two against steps (bottom axis) and against
wall time (a second, top axis), headless (no pyplot).
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np


class Curves(NamedTuple):
  """Arrays of one run. `train_*`: [n_train] each; `eval_*`: [n_eval] each."""
  train_step: np.ndarray
  train_wall_min: np.ndarray   # training minutes up to each train line
  train_loss: np.ndarray
  eval_step: np.ndarray
  eval_wall_min: np.ndarray
  eval_value: np.ndarray
  eval_key: str                # the validation metric drawn ('' if the run has none)


def read_curves(metrics_path: str, eval_key: str | None = None) -> Curves:
  """Parses `metrics.jsonl`; `eval_key` defaults to eval_accuracy, else eval_perplexity,
  else eval_loss (the first one the run logged). Torn or non-JSON lines are skipped."""
  train, evals = [], []
  with open(metrics_path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      (train if "loss" in row else evals if any(k.startswith("eval_") for k in row)
       else []).append(row)
  if eval_key is None:
    logged = {k for r in evals for k in r}
    eval_key = next((k for k in ("eval_accuracy", "eval_perplexity", "eval_loss") if k in logged),
                    "")
  steps = np.array([r["step"] for r in train], np.int64)
  rate = np.array([r.get("steps_per_sec") or np.nan for r in train], np.float64)
  gaps = np.diff(np.concatenate([[0], steps]))
  fallback = np.nanmedian(rate) if np.isfinite(rate).any() else 1.0
  wall = np.cumsum(gaps / np.where(np.isfinite(rate) & (rate > 0), rate, fallback)) / 60
  ev = [r for r in evals if eval_key in r]
  ev_steps = np.array([r["step"] for r in ev], np.int64)
  ev_wall = np.interp(ev_steps, np.concatenate([[0], steps]), np.concatenate([[0.0], wall])) \
      if len(steps) else np.zeros(len(ev))
  return Curves(steps, wall, np.array([r["loss"] for r in train], np.float64), ev_steps, ev_wall,
                np.array([r[eval_key] for r in ev], np.float64), eval_key)


def plot_curves(curves: Curves, path: str, title: str = "", eval_split: str = "validation") -> str:
  """Train loss (left axis) and the evaluated metric (right axis) against steps, with
  training wall time in minutes on the top axis. `eval_split` names the split the loop
  evaluated on, for the axis label ("test accuracy", "val perplexity"). Writes `path`
  (PNG); returns it."""
  from matplotlib.figure import Figure
  if len(curves.train_step) == 0:
    raise ValueError(f"no train lines to plot for {path}.")
  fig = Figure(figsize=(6.4, 3.8), layout="constrained")
  ax = fig.add_subplot()
  ax.plot(curves.train_step, curves.train_loss, color="tab:blue", lw=1.2, label="train loss")
  ax.set_xlabel("step")
  ax.set_ylabel("train loss", color="tab:blue")
  if curves.eval_key:
    ax2 = ax.twinx()
    ax2.plot(curves.eval_step, curves.eval_value, "o-", color="tab:orange", ms=3,
             label=curves.eval_key)
    ax2.set_ylabel(curves.eval_key.replace("eval_", f"{eval_split} "), color="tab:orange")
  # Top axis: wall time; steps -> minutes by the logged training rate (monotone).
  s = np.concatenate([[0], curves.train_step]).astype(np.float64)
  w = np.concatenate([[0.0], curves.train_wall_min])
  top = ax.secondary_xaxis("top", functions=(lambda x: np.interp(x, s, w),
                                             lambda m: np.interp(m, w, s)))
  # Ticks only inside the run's wall time: past its end the clamped map stacks them.
  from matplotlib.ticker import MaxNLocator
  top.set_xticks([t for t in MaxNLocator(7).tick_values(0.0, w[-1]) if 0 <= t <= w[-1]])
  top.set_xlabel("training wall time (min)")
  ax.set_title(title, fontsize=9)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  return path
