"""Metrics to TensorBoard (`tbevents`, no TensorFlow) and JSONL; a console progress bar.

Only process 0 writes. `MetricWriter.write(step, {...})` appends one JSON line to
`<workdir>/metrics.jsonl` and one scalar per key to `<workdir>/tensorboard/`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from attn_jax.train.tbevents import EventWriter


class MetricWriter:
  """JSONL + TensorBoard scalars (disabled on processes other than 0)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = EventWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._tb.scalars(int(step), {k: v for k, v in clean.items() if math.isfinite(v)})
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict[str, float]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """A one-line progress bar with ETA on a TTY; silent otherwise (CI, pipes, `mode='off'`)."""

  def __init__(self, total: int, start: int = 0, mode: str = "auto", enabled: bool = True):
    tty = sys.stderr.isatty() and not os.environ.get("CI")
    self.on = enabled and (mode == "on" or (mode == "auto" and tty))
    self.total, self.start, self.t0 = total, start, time.time()

  def update(self, step: int, metrics: dict[str, float] | None = None) -> None:
    if not self.on:
      return
    done = step - self.start
    elapsed = time.time() - self.t0
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    frac = step / max(self.total, 1)
    bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
    extra = " ".join(f"{k}={v:.4g}" for k, v in (metrics or {}).items())
    eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
    sys.stderr.write(f"\r[{bar}] {step}/{self.total} {rate:.1f} it/s ETA {eta_s} {extra}\033[K")
    sys.stderr.flush()

  def close(self) -> None:
    if self.on:
      sys.stderr.write("\n")
      sys.stderr.flush()
