"""NaN/Inf watch of the training loop, checked one step late so it never stalls the device.

`NonFiniteGuard.push(step, metrics)` is called right after step `step` is dispatched; it
reads the loss and gradient norm of the step before (finished, or nearly, by then), so
the device always has the next step queued. `flush()` checks the newest step now (the
loop calls it before every save, so a non-finite state is never written).
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterator

from attn_jax.train.errors import NonFiniteError

WATCHED = ("loss", "grad_norm")


class NonFiniteGuard:
  """skip_limit=0: the first non-finite step raises NonFiniteError. skip_limit=n: the
  optimizer skips such updates (`optim.make_optimizer`); n in a row raise. `skipped`
  counts the skipped steps."""

  def __init__(self, scalars: Callable[[Any], dict[str, float]], skip_limit: int,
               last_checkpoint: Callable[[], str]):
    self.scalars, self.skip_limit, self.last_checkpoint = scalars, skip_limit, last_checkpoint
    self.pending: tuple[int, Any] | None = None
    self.skipped = self.in_a_row = 0

  def push(self, step: int, metrics: dict[str, Any]) -> None:
    prev, self.pending = self.pending, (step, {k: metrics[k] for k in WATCHED if k in metrics})
    if prev is not None:
      self._check(*prev)

  def flush(self) -> None:
    if self.pending is not None:
      prev, self.pending = self.pending, None
      self._check(*prev)

  def _check(self, step: int, metrics: dict[str, Any]) -> None:
    values = self.scalars(metrics)
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if not bad:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.skipped += 1
    if self.skip_limit and self.in_a_row < self.skip_limit:
      return
    what = ", ".join(f"{k} {v}" for k, v in bad.items())
    why = (f"{self.in_a_row} non-finite steps in a row (config.optim.skip_nonfinite="
           f"{self.skip_limit})" if self.skip_limit else "not finite")
    raise NonFiniteError(
        f"step {step}: {what} ({why}); stopped without saving, {self.last_checkpoint()}. "
        "Lower config.optim.learning_rate, set config.optim.grad_clip_norm, or skip such "
        "steps with config.optim.skip_nonfinite=<n>.")


@contextlib.contextmanager
def run_guard(config, workdir: str) -> Iterator[Any]:
  """Around a whole training run: validates `config`, takes the workdir lock (a second
  process refuses), saves or checks `config.json` (a resume with another model config is an
  error) and installs the SIGTERM/SIGINT `StopFlag` it yields; undone on exit."""
  from attn_jax.train import checkpoint as ckpt_lib
  from attn_jax.train import config as config_lib
  from attn_jax.train import lock as lock_lib
  from attn_jax.train import runconfig
  stop = ckpt_lib.StopFlag().install()
  lock = None
  try:
    config_lib.validate(config)
    dist = config.distributed
    name = f"lock.{dist.process_id}" if dist.num_processes > 1 else "lock"
    lock = lock_lib.WorkdirLock(workdir, name=name).acquire()
    ckpt_dir = os.path.join(workdir, "checkpoints")
    has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
    runconfig.check_or_save(config, workdir, has_ckpt)
    yield stop
  finally:
    if lock is not None:
      lock.release()
    stop.uninstall()


def stopped_during_setup(stop, workdir: str) -> dict[str, Any]:
  """The result of a run a signal stopped before its first step (nothing was written)."""
  print(f"stopped by {stop.signal_name} during setup; nothing trained or saved; workdir "
        f"{os.path.abspath(workdir)}", flush=True)
  return {"step": None, "train": {}, "eval": {}, "state": None, "stopped": True,
          "signal": stop.signal_name, "heatmap": None}
