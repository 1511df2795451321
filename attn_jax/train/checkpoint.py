"""Orbax checkpoints: train state + data iterator state, last K plus the best.

A checkpoint holds `state` (the TrainState as host arrays, identical on every
process) and `data` (the iterator state, JSON), so a resumed run continues with
exactly the batches it would have seen. Orbax writes to a temporary folder and
renames it when complete, so a run killed mid-save resumes from the previous one.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class Checkpointer:
  """`CheckpointManager` under `<workdir>/checkpoints`.

  keep: the last `keep` checkpoints are kept; with `best_metric` the best one by that
  eval metric (`best_mode` 'max' | 'min') is kept too. Saving is asynchronous when
  `async_save`; `wait()` blocks until the last save is on disk.
  """

  def __init__(self, workdir: str, keep: int, best_metric: str = "", best_mode: str = "max",
               async_save: bool = True):
    policies = [cm.LatestN(n=keep)]
    if best_metric:
      policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                               n=1, keep_checkpoints_without_metrics=False))
    # best_fn also makes orbax write the metrics next to each checkpoint.
    options = ocp.CheckpointManagerOptions(
        best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode,
        preservation_policy=cm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    self.best_metric = best_metric
    self.manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                         options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    """The kept step with the best `best_metric` (None without metrics)."""
    return self.manager.best_step() if self.best_metric else None

  def save(self, step: int, host_state: Any, data_state: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Saves (asynchronously) unless a checkpoint for `step` exists."""
    if step in self.manager.all_steps():
      return False
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    args = ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                              data=ocp.args.JsonSave(data_state))
    return self.manager.save(step, args=args, metrics=metrics, force=force)

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """-> (host state shaped like `template`, data iterator state, step)."""
    step = self.manager.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), data=ocp.args.JsonRestore()))
    return out["state"], dict(out["data"]), step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class StopFlag:
  """Set by SIGTERM (preemption): the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def install(self) -> "StopFlag":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __bool__(self) -> bool:
    return self.event.is_set()
