"""Orbax checkpoints: train state + data iterator state, last K plus the best.

A checkpoint holds `state` (the TrainState: the global arrays of `strategy=jit`, each
shard written by the process that holds it and never gathered on one host; host arrays
under pmap) and `data` (the iterator state, JSON), so a resumed run continues with exactly
the batches it would have seen. A state restores into the shardings of the restore target
(`abstract_state()`), whatever mesh or device count saved it. Orbax writes to a temporary folder and
renames it when complete, so a run killed mid-save resumes from the previous one.

Guarantees: `restore()` tries the newest checkpoint first; one that cannot be read is
moved aside to `<workdir>/checkpoints.unreadable/` (never deleted), named in one line
with the reason, and the previous one is restored; none readable -> `CheckpointError`.
A save that fails (no permission, disk full, checked before writing) raises `SaveError`
naming the path and the cause; the checkpoints already there are kept.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Iterator

import jax

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from attn_jax.train.errors import CheckpointError, NonFiniteError, SaveError


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
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.failed: SaveError | None = None
    self._last_step: int | None = None
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:
      raise SaveError(f"{self.directory}: cannot create the checkpoint folder ({_reason(e)}).") \
          from None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    """The kept step with the best `best_metric` (None without metrics)."""
    return self.manager.best_step() if self.best_metric else None

  def save(self, step: int, host_state: Any, data_state: dict, metrics: dict | None = None,
           force: bool = False) -> bool:
    """Saves (asynchronously) unless a checkpoint for `step` exists; a state holding
    NaN/Inf raises NonFiniteError instead (never written, nothing rotated out).

    Raises SaveError (naming the path and the cause) when the folder is not writable,
    the disk has too little room for the state, or the write (or an earlier
    asynchronous one) failed; the partial folder is removed, older checkpoints stay."""
    self.check()
    if step in self.manager.all_steps():
      return False
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    try:
      _check_finite(host_state)
    except CheckpointError as e:
      raise NonFiniteError(f"step {step}: the state to save holds NaN/Inf ({e}); not saved, "
                           f"{self.describe_last()}.") from None
    _preflight(self.directory, host_state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                              data=ocp.args.JsonSave(data_state))
    self._last_step = step
    try:
      return self.manager.save(step, args=args, metrics=metrics, force=force)
    except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way
      raise self._fail(step, e) from None

  def check(self) -> None:
    """Raises SaveError if a finished asynchronous save failed (cheap; call each step)."""
    if self.failed is not None:
      raise self.failed
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._fail(self._last_step, e) from None

  def _fail(self, step: int | None, e: BaseException) -> SaveError:
    """Records the failure of saving `step`: earlier saves still in flight are finished,
    the failed one's partial folder is removed; -> the SaveError to raise."""
    try:
      self.manager.wait_until_finished()
    except Exception:  # noqa: BLE001 - the failure being reported, or a consequence of it
      pass
    if step is not None:
      for tmp in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
        shutil.rmtree(tmp, ignore_errors=True)   # a partial save, never a finished checkpoint
    kept = self.all_steps_on_disk()
    path = os.path.join(self.directory, str(step)) if step is not None else self.directory
    self.failed = SaveError(f"cannot save checkpoint {path}: {_reason(e)}; kept "
                            f"{'steps ' + ', '.join(map(str, kept)) if kept else 'no checkpoint'}.")
    return self.failed

  def describe_last(self) -> str:
    """'the last checkpoint is <dir>/<step>' (or that there is none), for messages."""
    steps = sorted(set(self.all_steps_on_disk()) | set(self.manager.all_steps()))
    return (f"the last checkpoint is {self.directory}/{steps[-1]}" if steps
            else f"no checkpoint in {self.directory}")

  def all_steps_on_disk(self) -> list[int]:
    """Finished checkpoint steps in the folder (not trusting the manager's cache)."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return []
    return sorted(int(n) for n in names if n.isdigit())

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """-> (state shaped like `template`, data iterator state, step).

    `template`: host arrays or `jax.ShapeDtypeStruct`s (with shardings to restore into).
    With `step=None` the newest readable checkpoint: an unreadable one is moved to
    `checkpoints.unreadable/` with a one-line warning and the previous one is tried.
    An explicit unreadable `step` and no readable checkpoint raise CheckpointError."""
    if step is not None:
      try:
        return self._restore(template, step)
      except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {self.directory}/{step} cannot be read: "
                              f"{_reason(e)}.") from None
    tried = []
    for s in sorted(set(self.manager.all_steps()) | set(self.all_steps_on_disk()), reverse=True):
      try:
        with _quiet_on_failure():
          return self._restore(template, s)
      except Exception as e:  # noqa: BLE001 - whatever is wrong with it, try the previous one
        if _is_mismatch(e):   # readable, but saved by another model / optimizer config
          raise CheckpointError(
              f"checkpoint {self.directory}/{s} does not fit this run's train state (saved "
              f"with another model or optimizer config?): {_reason(e)}; nothing was moved.") \
              from None
        moved = self._move_aside(s)
        tried.append(s)
        print(f"warning: checkpoint {self.directory}/{s} cannot be read ({_reason(e)}); "
              f"moved to {moved}; trying the previous one.", file=sys.stderr, flush=True)
    raise CheckpointError(f"{self.directory}: no readable checkpoint (unreadable steps "
                          f"{tried} were moved to {self.directory}.unreadable/).")

  def _restore(self, template: Any, step: int) -> tuple[Any, dict, int]:
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template), data=ocp.args.JsonRestore()))
    data = out["data"]
    if not isinstance(data, dict):
      raise CheckpointError(f"item 'data' is {type(data).__name__}, not a dict")
    _check_finite(out["state"])
    return out["state"], dict(data), step

  def _move_aside(self, step: int) -> str:
    dest_root = self.directory + ".unreadable"
    os.makedirs(dest_root, exist_ok=True)
    dest = os.path.join(dest_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    while os.path.exists(dest):
      dest += "x"
    src = os.path.join(self.directory, str(step))
    if os.path.exists(src):
      os.replace(src, dest)
    self.manager.reload()
    return dest

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._fail(self._last_step, e) from None

  def close(self) -> None:
    """Waits for the last save and closes; after a failed save only closes (no re-raise)."""
    if self.failed is None:
      self.wait()
    try:
      self.manager.close()
    except Exception:  # noqa: BLE001 - the failure was reported already
      if self.failed is None:
        raise


@contextlib.contextmanager
def _quiet_on_failure() -> Iterator[None]:
  """Holds back stderr (file descriptor 2, where orbax's log and tensorstore's stray
  'Event loop is closed' tracebacks of a failed read go) and absl errors; replays them
  if the block succeeds, drops them if it raises (the caller reports the failure)."""
  import logging
  import tempfile
  sys.stderr.flush()
  saved_fd = os.dup(2)
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    ok = False
    try:
      yield
      ok = True
    finally:
      if not ok:
        time.sleep(0.2)   # callbacks of reads still in flight print here, not on the console
      sys.stderr.flush()
      os.dup2(saved_fd, 2)
      os.close(saved_fd)
      absl_logger.setLevel(level)
      if ok:
        tmp.seek(0)
        held = tmp.read()
        if held:
          os.write(2, held)


def _is_mismatch(e: BaseException) -> bool:
  """Orbax's error for a template whose tree or shapes differ from the checkpoint's."""
  text = str(e)
  return isinstance(e, ValueError) and ("tree structures do not match" in text
                                        or "shape" in text.lower() and "mismatch" in text.lower())


def _reason(e: BaseException) -> str:
  """An exception as one short line: type and the first line of its message."""
  while e.__cause__ is not None and not str(e).strip():
    e = e.__cause__
  text = (str(e).strip().splitlines() or [""])[0]
  if isinstance(e, OSError) and e.strerror:
    text = f"{e.strerror}" + (f": {e.filename}" if e.filename else "")
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _nbytes(tree: Any) -> int:
  return int(sum(math.prod(getattr(x, "shape", ())) * getattr(getattr(x, "dtype", None),
                                                               "itemsize", 8)
                 for x in jax.tree_util.tree_leaves(tree)))


def _preflight(directory: str, tree: Any) -> None:
  """Raises SaveError before writing when `directory` is not writable or lacks room."""
  if not os.access(directory, os.W_OK | os.X_OK):
    raise SaveError(f"cannot save checkpoints in {directory}: Permission denied (not writable).")
  need = 2 * _nbytes(tree) + (1 << 20)
  try:
    free = shutil.disk_usage(directory).free
  except OSError as e:
    raise SaveError(f"cannot save checkpoints in {directory}: {_reason(e)}.") from None
  if free < need:
    raise SaveError(f"cannot save checkpoints in {directory}: disk full ({free / 2**20:.1f} MiB "
                    f"free, a checkpoint needs about {need / 2**20:.1f} MiB).")


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
  """bool [len(leaves)]: whether each array is free of NaN/Inf. One program for all of
  them: sharded arrays reduce with collectives, and many small collective programs in
  flight at once can deadlock the CPU backend's simulated devices."""
  import jax.numpy as jnp
  return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def _device_flags(arrays: list) -> list[bool]:
  """`_all_finite(arrays)` on this host (per array when they live on different devices)."""
  import numpy as np
  from jax.experimental import multihost_utils
  if not arrays:
    return []
  if all(a.is_fully_addressable and all(d.platform == "cpu" for d in a.sharding.device_set)
         for a in arrays):
    # Host memory already: numpy reads each distinct shard in place, no program to compile.
    return [all(bool(np.isfinite(np.asarray(s.data)).all())
                for s in a.addressable_shards if s.replica_id == 0) for a in arrays]
  if len({frozenset(a.sharding.device_set) for a in arrays}) > 1:
    return [ok for a in arrays for ok in _device_flags([a])]
  flags = _all_finite(arrays)
  if flags.is_fully_replicated:
    return np.asarray(flags.addressable_data(0)).tolist()
  if flags.is_fully_addressable:
    return np.asarray(flags).tolist()
  return np.asarray(multihost_utils.process_allgather(flags, tiled=True)).tolist()


def _check_finite(tree: Any) -> None:
  """Raises CheckpointError naming the first float leaf holding NaN/Inf (one device sync
  for all device arrays, which may be sharded over devices and hosts)."""
  import jax.numpy as jnp
  import numpy as np
  leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if isinstance(x, (np.ndarray, jax.Array)) and jnp.issubdtype(x.dtype, jnp.floating)]
  on_device = [x for _, x in leaves if isinstance(x, jax.Array)]
  device_flags = iter(_device_flags(on_device))
  flags = [bool(np.isfinite(x).all()) if isinstance(x, np.ndarray) else bool(next(device_flags))
           for _, x in leaves]
  for (path, _), ok in zip(leaves, flags):
    if not ok:
      raise CheckpointError(f"{jax.tree_util.keystr(path)} holds NaN/Inf")


class StopFlag:
  """Set by SIGTERM (preemption) or SIGINT (Ctrl-C): the loop saves at the next step
  boundary and returns. A second SIGINT interrupts at once (KeyboardInterrupt).

  `signal_name` is 'SIGTERM' or 'SIGINT' once set; `bool(flag)` says whether it is."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.event = threading.Event()
    self.signal_name = ""
    self._previous: dict[int, Any] = {}

  def _handler(self, signum, frame) -> None:
    if signum == signal.SIGINT and self.event.is_set():
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    self.event.set()

  def install(self) -> "StopFlag":
    if threading.current_thread() is threading.main_thread() and not self._previous:
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def uninstall(self) -> None:
    for sig, prev in self._previous.items():
      signal.signal(sig, prev)
    self._previous = {}

  def __bool__(self) -> bool:
    return self.event.is_set()
