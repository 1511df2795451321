"""The runner's own errors: each message is one line naming the key, file or step at fault.

The entry points (`experiments.train`, `evaluate`, `visualize`) print these (and
`ConfigError`, `DataError`) as one line and exit with status 2; `--debug` or
`ATTN_JAX_DEBUG=1` shows the traceback instead.
"""
from __future__ import annotations


class RunError(RuntimeError):
  """Base class of the runner's errors below."""


class CheckpointError(RunError):
  """No checkpoint of the workdir can be read, or one cannot be written."""


class SaveError(CheckpointError):
  """Writing a checkpoint failed (permission, disk full); names the path and the cause."""


class LockError(RunError):
  """Another live process holds the workdir; names its pid, host and start time."""


class NonFiniteError(RunError):
  """The loss or the gradients became NaN/Inf; names the step and the last finite checkpoint."""


class MismatchError(RunError):
  """A resumed or evaluated run's config differs from the one saved in its workdir."""
