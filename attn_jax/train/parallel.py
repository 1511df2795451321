"""Devices, hosts and the two ways of running a step on all of them.

`jit` (default): a 1-D mesh `('data',)` over every device of every process
(`jax.make_mesh`); batches are global arrays sharded on `data` with `NamedSharding`,
the state is replicated, and one `jax.jit` step serves 1 device, many devices and
many hosts. The state is born on the mesh: its shapes come from `jax.eval_shape`, it is
created by `jax.jit(init, out_shardings=...)` and restored from Orbax straight into those
shardings, so it never passes through the host. `pmap`: the same step with explicit
`psum`s, for compatibility (its state goes through the host). Each process passes only
its own rows of the global batch.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def initialize_distributed(cfg) -> None:
  """`jax.distributed.initialize` from `config.distributed` (or the environment).

  With `coordinator_address` set, joins that coordinator as `process_id` of
  `num_processes`; with `initialize=True`, lets JAX read the cluster from the
  environment (TPU pods, SLURM, ...). Otherwise a single process. On CPU the
  cross-process collectives use gloo.
  """
  if not cfg.coordinator_address and not cfg.initialize:
    return
  if jax.distributed.is_initialized():
    return
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cfg.coordinator_address:
    jax.distributed.initialize(cfg.coordinator_address, num_processes=cfg.num_processes,
                               process_id=cfg.process_id)
  else:
    jax.distributed.initialize()


def _has_accelerator() -> bool:
  # Must not initialise the backend before jax.distributed.initialize: look at the env only.
  return bool(os.environ.get("TPU_NAME") or os.environ.get("CUDA_VISIBLE_DEVICES"))


def to_host(tree: Any) -> Any:
  """A replicated global pytree -> numpy on this host (reads the local copy)."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array)
                      else np.asarray(a), tree)


class JitStrategy:
  """Mesh + NamedSharding: state replicated, batch sharded over `data`."""
  name = "jit"

  def __init__(self):
    # Auto axes: XLA propagates the batch sharding through the model (no explicit-sharding rules).
    self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P("data"))

  def state_shardings(self, abstract: Any) -> Any:
    """The sharding of every leaf of the train state (data parallel: replicated)."""
    return jax.tree.map(lambda _: self.replicated, abstract)

  def init_state(self, init_fn: Callable[[], Any]) -> Any:
    """`init_fn()` run as one program whose outputs are created on the mesh."""
    abstract = jax.eval_shape(init_fn)
    return jax.jit(init_fn, out_shardings=self.state_shardings(abstract))()

  def abstract_state(self, init_fn: Callable[[], Any]) -> Any:
    """ShapeDtypeStructs (with their target shardings) of the state: the restore target."""
    abstract = jax.eval_shape(init_fn)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, self.state_shardings(abstract))

  def checkpoint_state(self, state: Any) -> Any:
    """What a checkpoint saves: the global arrays themselves (each process writes its part)."""
    return state

  def from_checkpoint(self, restored: Any) -> Any:
    """A state restored into `abstract_state`'s shardings is ready to use."""
    return restored

  def put_state(self, host_state: Any) -> Any:
    """Host pytree (same on every process) -> replicated global arrays."""
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), self.replicated,
                                               lambda idx, x=x: np.asarray(x)[idx]), host_state)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> global arrays [global_batch, ...] sharded on `data`."""
    return {k: jax.make_array_from_process_local_data(self.sharded, v)
            for k, v in local_batch.items()}

  def compile_train(self, step_fn: Callable) -> Callable:
    return jax.jit(step_fn, in_shardings=(self.replicated, self.sharded),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

  def compile_eval(self, step_fn: Callable) -> Callable:
    return jax.jit(step_fn, in_shardings=(self.replicated, self.sharded),
                   out_shardings=self.replicated)

  def host_state(self, state: Any) -> Any:
    return to_host(state)

  def scalars(self, tree: Any) -> dict[str, float]:
    return {k: float(v) for k, v in to_host(tree).items()}


class PmapStrategy:
  """`jax.pmap` over this process's devices; state has a leading device axis."""
  name = "pmap"

  def __init__(self):
    self.n = jax.local_device_count()

  def init_state(self, init_fn: Callable[[], Any]) -> Any:
    return self.put_state(jax.device_get(jax.jit(init_fn)()))

  def abstract_state(self, init_fn: Callable[[], Any]) -> Any:
    """Host zeros shaped like the state: pmap restores to the host, then replicates."""
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(init_fn))

  def checkpoint_state(self, state: Any) -> Any:
    return self.host_state(state)

  def from_checkpoint(self, restored: Any) -> Any:
    return self.put_state(restored)

  def put_state(self, host_state: Any) -> Any:
    # A leading axis of one copy per local device; pmap shards it on the first call.
    return jax.tree.map(lambda x: np.stack([np.asarray(x)] * self.n), host_state)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.reshape((self.n, v.shape[0] // self.n) + v.shape[1:])
            for k, v in local_batch.items()}

  def compile_train(self, step_fn: Callable) -> Callable:
    return jax.pmap(step_fn, axis_name="data", donate_argnums=(0,))

  def compile_eval(self, step_fn: Callable) -> Callable:
    return jax.pmap(step_fn, axis_name="data")

  def host_state(self, state: Any) -> Any:
    return jax.tree.map(lambda a: np.asarray(a[0]), state)

  def scalars(self, tree: Any) -> dict[str, float]:
    return {k: float(np.asarray(v.addressable_data(0)).reshape(-1)[0]) for k, v in tree.items()}


def make_strategy(name: str):
  return PmapStrategy() if name == "pmap" else JitStrategy()

