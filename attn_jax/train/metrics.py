"""Metrics to TensorBoard (`tbevents`, no TensorFlow) and JSONL; a console progress bar.

Only process 0 writes. `MetricWriter.write(step, {...})` appends one JSON line to
`<workdir>/metrics.jsonl` and one scalar per key to `<workdir>/tensorboard/`.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from typing import Any, Sequence

from attn_jax.train.tbevents import EventWriter


class MetricWriter:
  """JSONL + TensorBoard scalars (disabled on processes other than 0).

  `resume_step`: the step training starts from; lines logged after it by an earlier,
  interrupted invocation are dropped (the resumed run logs those steps again)."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        truncate_jsonl(self.jsonl_path, resume_step)
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


def truncate_jsonl(path: str, step: int) -> int:
  """Drops the lines of `path` logged after `step` (a resumed run logs them again), and a
  torn last line; rewrites atomically. Returns the number of lines dropped."""
  if not os.path.exists(path):
    return 0
  keep, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if int(row.get("step", 0)) <= step:
        keep.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return dropped


class Progress:
  """A one-line progress bar with ETA on a TTY; on a pipe, file or nohup (`mode='auto'`
  without a TTY) a plain progress line every `every_s` seconds; nothing with `mode='off'`."""

  def __init__(self, total: int, start: int = 0, mode: str = "auto", enabled: bool = True,
               every_s: float = 60.0):
    tty = sys.stderr.isatty() and not os.environ.get("CI")
    self.on = enabled and (mode == "on" or (mode == "auto" and tty))
    self.lines = enabled and mode == "auto" and not self.on and every_s > 0
    self.every_s, self.t_line = every_s, time.time()
    self.total, self.start, self.t0 = total, start, time.time()

  def update(self, step: int, metrics: dict[str, float] | None = None) -> None:
    if self.lines and time.time() - self.t_line >= self.every_s:
      self.t_line = time.time()
      done, elapsed = step - self.start, time.time() - self.t0
      rate = done / elapsed if elapsed > 0 else 0.0
      eta = (self.total - step) / rate if rate > 0 else float("inf")
      eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
      extra = " ".join(f"{k}={v:.4g}" for k, v in (metrics or {}).items())
      print(f"step {step}/{self.total} {rate:.1f} it/s ETA {eta_s} {extra}", file=sys.stderr,
            flush=True)
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


# Environment variables that can change what a run computes or how fast (devices, XLA
# options, the glibc allocator): a recorded command starts with those that are set.
RECORDED_ENV = ("XLA_FLAGS", "JAX_PLATFORMS", "GLIBC_TUNABLES", "MALLOC_ARENA_MAX",
                "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def recorded_env() -> list[str]:
  """`NAME=value` (shell-quoted) for each of `RECORDED_ENV` set in this process."""
  return [f"{k}={shlex.quote(os.environ[k])}" for k in RECORDED_ENV if k in os.environ]


def command_line(module: str | None = None, args: Sequence[str] | None = None) -> str:
  """A shell command that reproduces this process: `recorded_env()`, then `python -m
  pkg.mod args` for a module run with -m (the module's name does not depend on the working
  directory), else `python <script> args`; the arguments are shell-quoted. An entry point
  called as a function (`main(argv)`) passes its `module` name and `args` instead."""
  argv = list(sys.argv) or [""]
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  path = os.path.abspath(argv[0]) if argv[0] else ""
  if module is not None:
    prog = f"python -m {module}"
  elif spec is not None and spec.origin and os.path.abspath(spec.origin) == path:
    prog = f"python -m {spec.name.removesuffix('.__main__')}"
  else:
    prog = f"python {shlex.quote(argv[0])}" if argv[0] else "python"
  rest = argv[1:] if args is None else list(args)
  return " ".join(recorded_env() + [prog] + [shlex.quote(a) for a in rest])


def cpu_model() -> str:
  """The CPU's model name ('AMD EPYC ...', from /proc/cpuinfo where there is one)."""
  import platform
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def hardware() -> str:
  """'<n> x <device kind> (<cpu model>, <cores> cores)' of this process, for result tables
  (says so when the process is pinned to fewer cores, e.g. by `taskset`)."""
  import jax
  cpu = cpu_model()
  devs = jax.devices()
  cores = f"{os.cpu_count()} cores"
  if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) < (os.cpu_count() or 0):
    cores = f"pinned to {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores"   # taskset
  return f"{len(devs)} x {devs[0].device_kind} ({cpu}, {cores})"


def utc_stamp(seconds: float | None = None) -> str:
  """'YYYY-MM-DD HH:MM UTC' of `seconds` since the epoch (default: now), as run.json keeps it."""
  return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


class RunRecord:
  """`<workdir>/run.json`: what a results table needs, kept current during training.

  Holds the command line, config, parameter count, hardware, the last step, the
  training wall time summed over every (resumed) invocation, the time of the last update
  (`updated`, `utc_stamp`), plus the latest and best eval metrics. Rewritten atomically at
  each eval and at the end, so a killed run still has its record.
  """

  def __init__(self, workdir: str, config, num_params: int, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "run.json")
    self.t0 = time.time()
    prev = {}
    if enabled and os.path.exists(self.path):
      with open(self.path) as f:
        prev = json.load(f)
    self.prior_wall_s = float(prev.get("wall_s", 0.0))
    commands = prev.get("commands", [])
    cmd = command_line()
    if cmd not in commands:
      commands.append(cmd)
    self.record = {"commands": commands, "config": json.loads(config.to_json_best_effort()),
                   "num_params": int(num_params), "hardware": hardware(),
                   "step": prev.get("step", 0), "eval": prev.get("eval", {}),
                   "best": prev.get("best", {})}

  def update(self, step: int, eval_metrics: dict[str, Any] | None = None,
             best_metric: str = "", best_mode: str = "max") -> None:
    if not self.enabled:
      return
    r = self.record
    r["step"] = int(step)
    r["wall_s"] = self.prior_wall_s + (time.time() - self.t0)
    r["updated"] = utc_stamp()
    if eval_metrics:
      r["eval"] = {"step": int(step), **{k: float(v) for k, v in eval_metrics.items()}}
      if best_metric in eval_metrics:
        old = r["best"].get(best_metric)
        new = float(eval_metrics[best_metric])
        if old is None or (new > old if best_mode == "max" else new < old):
          r["best"] = dict(r["eval"])
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(r, f, indent=1)
    os.replace(tmp, self.path)
