"""`<workdir>/lock`: one training process per workdir.

`WorkdirLock(workdir).acquire()` creates the file atomically (O_EXCL) holding the pid,
host and start time of this process. A second process refuses with `LockError` naming
the holder; a lock whose pid is dead (on this host) is taken over with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time


def _alive(pid: int) -> bool:
  """Whether process `pid` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """An exclusive, stale-aware lock file in a workdir; use as a context manager."""

  def __init__(self, workdir: str, enabled: bool = True, name: str = "lock"):
    self.path = os.path.join(workdir, name)
    self.enabled = enabled
    self.held = False

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock or raises LockError naming the live holder (see the module doc)."""
    from attn_jax.train.errors import LockError
    if not self.enabled:
      return self
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        h = self._holder()
        if h is None:   # being written right now, or garbage: look again, then take it
          time.sleep(0.2)
          h = self._holder()
          if h is None:
            self._take_over("an unreadable lock file")
            continue
        same_host = h.get("host") == me["host"]
        if same_host and h.get("pid") == os.getpid():
          self.held = True
          return self
        if same_host and not _alive(int(h.get("pid", -1))):
          self._take_over(f"a stale lock of pid {h.get('pid')} (started {h.get('started')}, "
                          "no longer running)")
          continue
        raise LockError(f"{os.path.dirname(self.path)} is in use by pid {h.get('pid')} on "
                        f"{h.get('host')} since {h.get('started')}; wait for it to finish or "
                        f"stop it (if it is gone, delete {self.path}).") from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self.held = True
      return self
    raise LockError(f"{self.path}: could not take the lock (other processes keep taking it).")

  def _take_over(self, what: str) -> None:
    print(f"warning: {self.path}: taking over {what}.", file=sys.stderr, flush=True)
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def release(self) -> None:
    """Removes the lock file if this process holds it."""
    if self.held:
      h = self._holder()
      if h is not None and h.get("pid") == os.getpid():
        try:
          os.remove(self.path)
        except OSError:
          pass
      self.held = False

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
