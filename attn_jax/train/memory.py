"""Per-device memory of a training run on a mesh, without allocating anything.

Parameters and optimizer state: the bytes of each leaf's largest shard
(`NamedSharding.shard_shape`). Activations and temporaries: XLA's buffer assignment of
the compiled train step (`jax.jit(...).lower(...).compile().memory_analysis()`, with
abstract inputs only); 'n/a' where the backend does not report it. On CPU the numbers
come from the CPU compiler: indicative of, not identical to, a GPU or TPU's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from attn_jax.train import sharding as sharding_lib

MiB = 2 ** 20


@dataclasses.dataclass
class MemoryRow:
  """Bytes per device. `temp` (activations kept for the backward pass and other
  temporaries) and `peak` (arguments + outputs - donated + temp) are None when unknown."""
  mesh: str
  params: int
  opt_state: int
  other: int
  temp: int | None = None
  peak: int | None = None
  label: str = ""
  batch_per_device: int | None = None

  def line(self) -> str:
    """One line for the start-up log."""
    return (f"memory per device on mesh {self.mesh}: params {_size(self.params)}, "
            f"optimizer state {_size(self.opt_state)}, activations + temporaries "
            f"{_size(self.temp)}, step peak {_size(self.peak)}")


def _size(n: int | None) -> str:
  """Bytes in the largest binary unit that keeps the number >= 1 ('n/a' for None)."""
  if n is None:
    return "n/a"
  for unit, scale in (("GiB", 2 ** 30), ("MiB", MiB), ("KiB", 2 ** 10)):
    if n >= scale:
      return f"{n / scale:.1f} {unit}"
  return f"{n} B"


def state_bytes(abstract_state: Any, shardings: Any) -> dict[str, int]:
  """{'params', 'opt_state', 'other'} -> bytes per device of a TrainState laid out by
  `shardings` (a tree of NamedShardings with the state's structure)."""
  if not hasattr(abstract_state, "params"):
    return {"params": sharding_lib.bytes_per_device(abstract_state, shardings), "opt_state": 0,
            "other": 0}
  out = {}
  for f in ("params", "opt_state"):
    out[f] = sharding_lib.bytes_per_device(getattr(abstract_state, f), getattr(shardings, f))
  total = sharding_lib.bytes_per_device(abstract_state, shardings)
  out["other"] = total - out["params"] - out["opt_state"]
  return out


def compiled_bytes(compiled: Any) -> tuple[int | None, int | None]:
  """(temp, peak) bytes per device of a compiled executable, or (None, None)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None, None
  if m is None:
    return None, None
  temp = int(m.temp_size_in_bytes)
  peak = int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + temp)
  return temp, peak


def global_batch_abstract(local_batch: dict[str, np.ndarray], sharding: Any,
                          processes: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """This process's rows of a batch -> ShapeDtypeStructs of the global batch in `sharding`."""
  return {k: jax.ShapeDtypeStruct((v.shape[0] * processes,) + tuple(v.shape[1:]), v.dtype,
                                  sharding=sharding) for k, v in local_batch.items()}


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `abstract` carrying `shardings`."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def report(strategy: Any, abstract_state: Any, train_step: Callable | None = None,
           batch: dict[str, Any] | None = None, label: str = "") -> MemoryRow:
  """The memory of a JitStrategy's state (and, given the jitted `train_step` and an abstract
  global `batch`, of its compiled step; compiling here fills the cache the first call
  uses, so nothing is compiled twice)."""
  shardings = strategy.state_shardings(abstract_state)
  parts = state_bytes(abstract_state, shardings)
  temp = peak = None
  if train_step is not None and batch is not None:
    compiled = train_step.lower(with_shardings(abstract_state, shardings), batch).compile()
    temp, peak = compiled_bytes(compiled)
  per_device = None
  if batch:
    rows = next(iter(batch.values())).shape[0]
    per_device = rows // sharding_lib.batch_shards(strategy.mesh)
  return MemoryRow(strategy.describe_mesh(), parts["params"], parts["opt_state"], parts["other"],
                   temp, peak, label, per_device)


def estimate(model: Any, task: Any, tx: Any, batch: dict[str, jax.ShapeDtypeStruct],
             mesh: Any, *, seed: int = 0, compile_step: bool = True, label: str = "",
             devices: list | None = None) -> MemoryRow:
  """Per-device memory of training `model` with `tx` on a global `batch` (shapes only) on
  `mesh` (a MeshSpec / 'fsdp=8' string / mapping), from `jax.eval_shape` and one
  compilation; nothing is allocated."""
  from attn_jax.train import parallel
  from attn_jax.train import step as step_lib
  strategy = parallel.JitStrategy(mesh, devices=devices)
  sample = {k: np.zeros((1,) + tuple(v.shape[1:]), v.dtype) for k, v in batch.items()}
  init_fn = step_lib.make_init_fn(model, task, tx, sample, seed)
  abstract = jax.eval_shape(init_fn)
  step = None
  if compile_step:
    strategy.state_shardings(abstract)
    step = strategy.compile_train(step_lib.make_train_step(
        model, task, tx, lambda _: 0.0, 0.0, constrain_params=strategy.param_constraint()))
  gbatch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=strategy.sharded)
            for k, v in batch.items()}
  return report(strategy, abstract, step, gbatch, label)


UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": MiB, "GiB": 2 ** 30}


def table(rows: list[MemoryRow], unit: str = "MiB") -> str:
  """A markdown table of `rows` (`unit` per device: B, KiB, MiB or GiB)."""
  mib = lambda b: "n/a" if b is None else f"{b / UNITS[unit]:,.1f}"
  lines = ["| model | mesh | examples / device | params | optimizer state | "
           "activations + temporaries | step peak |", "|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r.label} | {r.mesh} | {r.batch_per_device or 'n/a'} | {mib(r.params)} | "
                 f"{mib(r.opt_state)} | {mib(r.temp)} | {mib(r.peak)} |")
  return "\n".join(lines)
