"""Devices, hosts and the two ways of running a step on all of them.

`jit` (default): a mesh over every device of every process (`jax.make_mesh`; 1-D
`('data',)` by default, `('data', 'fsdp', 'seq', 'model')` from `config.mesh`, see
`attn_jax.train.sharding`); batches are global arrays sharded over ('data', 'fsdp') with
`NamedSharding`, the state is replicated or sharded by the rules of `sharding`, and one
`jax.jit` step serves 1 device, many devices and many hosts. The state is born on the mesh:
its shapes come from `jax.eval_shape`, it is created by `jax.jit(init, out_shardings=...)`
and restored from Orbax straight into those shardings, so it never passes through the
host. `pmap`: the same step with explicit `psum`s, for compatibility (its state goes
through the host; replicated only). Each process passes only its own rows of the global
batch.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from attn_jax.train import sharding as sharding_lib
from attn_jax.train.config import ConfigError


def initialize_distributed(cfg) -> None:
  """`jax.distributed.initialize` from `config.distributed` (or the environment).

  With `coordinator_address` set, joins that coordinator as `process_id` of
  `num_processes`; with `initialize=True`, lets JAX read the cluster from the
  environment (TPU pods, SLURM, ...). Otherwise a single process. On CPU the
  cross-process collectives use gloo. A no-op when JAX is already initialised.

  Args:
    cfg: `config.distributed`: `coordinator_address` ('' = none), `num_processes`,
      `process_id` and `initialize` (bool).
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
  """A global pytree -> numpy on this host: the local copy of a replicated array, the
  gathered shards of a sharded one (across processes a collective: call it on all)."""
  from jax.experimental import multihost_utils

  def get(a):
    if not isinstance(a, jax.Array):
      return np.asarray(a)
    if a.is_fully_replicated:
      return np.asarray(a.addressable_data(0))
    if a.is_fully_addressable:
      return np.asarray(a)
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
  return jax.tree.map(get, tree)


class JitStrategy:
  """Mesh + NamedSharding: batch sharded over ('data', 'fsdp'), state laid out by
  `sharding.state_shardings` (replicated on the default mesh).

  mesh: `config.mesh` (a ConfigDict / mapping / 'data=2,fsdp=4' string / None: every
  device on 'data'); devices: default all of them. The shardings of the state are fixed
  by the last `init_state` / `abstract_state` call; the compiled steps take and return
  the state in them.
  """
  name = "jit"

  def __init__(self, mesh: Any = None, devices: list | None = None):
    self.mesh_spec = sharding_lib.MeshSpec.parse(mesh)
    # Auto axes: XLA propagates the batch and state shardings through the model.
    self.mesh = sharding_lib.make_mesh(self.mesh_spec, devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, sharding_lib.batch_spec(self.mesh))
    self._state_shardings: Any = None
    local = jax.local_device_count()
    inner = sharding_lib.axis_size(self.mesh, "model") * sharding_lib.axis_size(self.mesh, "seq")
    if jax.process_count() > 1 and local % inner:
      raise ConfigError(f"config.mesh: model*seq={inner} must divide the {local} devices of "
                        "each process (each process feeds its own batch rows).")

  def describe_mesh(self) -> str:
    """e.g. 'data=2,fsdp=4' (the axis sizes of the mesh)."""
    return ",".join(f"{k}={v}" for k, v in dict(self.mesh.shape).items()
                    if k == "data" or v > 1)

  def state_shardings(self, abstract: Any) -> Any:
    """The sharding of every leaf of the train state (the rules of `sharding`)."""
    self._state_shardings = sharding_lib.state_shardings(abstract, self.mesh,
                                                         self.mesh_spec.fsdp_min_size)
    return self._state_shardings

  def param_constraint(self) -> Callable[[Any], Any] | None:
    """With an 'fsdp' axis: `params -> params` gathered over it (each still split over
    'model'), for the step to apply where the forward pass reads them; XLA all-gathers
    each parameter there and reduce-scatters its gradient, and the activations stay split
    over the batch. None otherwise (or before the state's shardings are known)."""
    if self._state_shardings is None or sharding_lib.axis_size(self.mesh, "fsdp") == 1:
      return None
    gathered = jax.tree.map(
        lambda s: NamedSharding(self.mesh, sharding_lib.without_axis(s.spec, "fsdp")),
        self._state_shardings.params, is_leaf=lambda s: isinstance(s, NamedSharding))
    return lambda params: jax.lax.with_sharding_constraint(params, gathered)

  def _state_in(self) -> Any:
    """The steps' state shardings: one replicated prefix on the default mesh."""
    if self._state_shardings is None or self.mesh_spec.is_default:
      return self.replicated
    return self._state_shardings

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
    """Host pytree (same on every process) -> global arrays in the state's shardings
    (replicated before any `init_state` / `abstract_state`)."""
    shardings = self._state_shardings
    if shardings is None or (jax.tree.structure(shardings) != jax.tree.structure(host_state)):
      shardings = jax.tree.map(lambda _: self.replicated, host_state)
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                  lambda idx, x=x: np.asarray(x)[idx]),
        host_state, shardings)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> global arrays [global_batch, ...] sharded over the batch axes."""
    return {k: jax.make_array_from_process_local_data(self.sharded, v)
            for k, v in local_batch.items()}

  def compile_train(self, step_fn: Callable) -> Callable:
    """`step_fn` jitted on the mesh, with the state donated.

    With a 'seq' axis the step first splits the batch's [batch, len] arrays along len
    over it, and runs under `jax.set_mesh(mesh)` (ring attention).

    Args:
      step_fn: `(state, batch) -> (state, metrics)` (`step.make_train_step` with
        axis_name=None).

    Returns:
      The compiled `(state, batch) -> (state, metrics)`: the state in its shardings
      (the input state's buffers are donated), the metrics replicated.
    """
    state = self._state_in()
    return self._in_mesh(jax.jit(self._split_sequences(step_fn),
                                 in_shardings=(state, self.sharded),
                                 out_shardings=(state, self.replicated), donate_argnums=(0,)))

  def compile_eval(self, step_fn: Callable) -> Callable:
    """`step_fn` jitted on the mesh (as `compile_train`, nothing donated).

    Args:
      step_fn: `(state, batch) -> sums` (`step.make_eval_step` with axis_name=None).

    Returns:
      The compiled `(state, batch) -> sums`, the sums replicated.
    """
    return self._in_mesh(jax.jit(self._split_sequences(step_fn),
                                 in_shardings=(self._state_in(), self.sharded),
                                 out_shardings=self.replicated))

  def _split_sequences(self, step_fn: Callable) -> Callable:
    """With a 'seq' axis: the step first splits every [batch, len] array of the batch
    along len over 'seq' (a local slice, no communication), so the activations are born
    split along the sequence and `F.attention` runs ring attention on them."""
    seq = sharding_lib.axis_size(self.mesh, "seq")
    if seq == 1:
      return step_fn
    split = NamedSharding(self.mesh, P(self.sharded.spec[0], "seq"))

    def step(state, batch):
      batch = {k: jax.lax.with_sharding_constraint(v, split)
               if v.ndim == 2 and v.shape[1] % seq == 0 else v for k, v in batch.items()}
      return step_fn(state, batch)
    return step

  def _in_mesh(self, jitted: Callable) -> Callable:
    """With a 'seq' axis, the jitted step traced and run under `jax.set_mesh`, where
    `F.attention` finds the mesh it rings over; else `jitted` itself."""
    return jitted if sharding_lib.axis_size(self.mesh, "seq") == 1 else _InMesh(jitted, self.mesh)

  def host_state(self, state: Any) -> Any:
    """The state as numpy on this host (`to_host`: a collective across processes).

    Args:
      state: a pytree of global arrays.

    Returns:
      The same pytree of full (unsharded) numpy arrays.
    """
    return to_host(state)

  def scalars(self, tree: Any) -> dict[str, float]:
    """Step outputs as Python floats (`to_host`: call it on every process).

    Args:
      tree: a flat dict of scalar arrays (metrics or eval sums).

    Returns:
      {name: float}.
    """
    return {k: float(v) for k, v in to_host(tree).items()}


class _InMesh:
  """A jitted function called (and lowered) under `jax.set_mesh(mesh)`."""

  def __init__(self, jitted: Callable, mesh):
    self.jitted, self.mesh = jitted, mesh

  def __call__(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted.lower(*args)


class PmapStrategy:
  """`jax.pmap` over this process's devices; state has a leading device axis."""
  name = "pmap"

  def __init__(self):
    self.n = jax.local_device_count()

  def init_state(self, init_fn: Callable[[], Any]) -> Any:
    """`init_fn()` run (jitted) on one device, then replicated with `put_state`.

    Args:
      init_fn: `() -> state`, the pure state initialiser.

    Returns:
      The state with a leading axis of `n` (local devices) copies, as numpy.
    """
    return self.put_state(jax.device_get(jax.jit(init_fn)()))

  def abstract_state(self, init_fn: Callable[[], Any]) -> Any:
    """Host zeros shaped like the state: pmap restores to the host, then replicates.

    Args:
      init_fn: `() -> state` (only traced, `jax.eval_shape`).

    Returns:
      The state's pytree of numpy zeros (no device axis): the restore target.
    """
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(init_fn))

  def checkpoint_state(self, state: Any) -> Any:
    """What a checkpoint saves: one copy of the state on the host (`host_state`).

    Args:
      state: the replicated state, with its leading device axis.

    Returns:
      The state as numpy, without the device axis.
    """
    return self.host_state(state)

  def from_checkpoint(self, restored: Any) -> Any:
    """A restored host state, replicated for pmap (`put_state`).

    Args:
      restored: the state as restored into `abstract_state` (numpy, no device axis).

    Returns:
      The state with a leading axis of `n` copies.
    """
    return self.put_state(restored)

  def put_state(self, host_state: Any) -> Any:
    """One copy of the state per local device; pmap shards it on the first call.

    Args:
      host_state: a pytree of arrays (no device axis).

    Returns:
      The pytree of numpy arrays [n, ...] (n = local devices).
    """
    return jax.tree.map(lambda x: np.stack([np.asarray(x)] * self.n), host_state)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's rows split over its devices.

    Args:
      local_batch: {name: [local_batch, ...]}, local_batch divisible by `n`.

    Returns:
      {name: [n, local_batch / n, ...]} numpy arrays.
    """
    return {k: v.reshape((self.n, v.shape[0] // self.n) + v.shape[1:])
            for k, v in local_batch.items()}

  def compile_train(self, step_fn: Callable) -> Callable:
    """`step_fn` under `jax.pmap` over axis 'data', with the state donated.

    Args:
      step_fn: `(state, batch) -> (state, metrics)` that reduces over 'data'
        (`step.make_train_step` with axis_name='data').

    Returns:
      The pmapped step: state, batch and metrics carry the leading device axis.
    """
    return jax.pmap(step_fn, axis_name="data", donate_argnums=(0,))

  def compile_eval(self, step_fn: Callable) -> Callable:
    """`step_fn` under `jax.pmap` over axis 'data'.

    Args:
      step_fn: `(state, batch) -> sums` that reduces over 'data'
        (`step.make_eval_step` with axis_name='data').

    Returns:
      The pmapped step: its sums carry the leading device axis (equal copies).
    """
    return jax.pmap(step_fn, axis_name="data")

  def host_state(self, state: Any) -> Any:
    """The first device's copy of the state, as numpy.

    Args:
      state: the replicated state, with its leading device axis.

    Returns:
      The state as numpy, without the device axis.
    """
    return jax.tree.map(lambda a: np.asarray(a[0]), state)

  def scalars(self, tree: Any) -> dict[str, float]:
    """Step outputs as Python floats, from the first local device's copy.

    Args:
      tree: a flat dict of pmapped scalars (each [n], equal after the step's psum).

    Returns:
      {name: float}.
    """
    return {k: float(np.asarray(v.addressable_data(0)).reshape(-1)[0]) for k, v in tree.items()}


def make_strategy(name: str, mesh: Any = None):
  """'pmap' -> PmapStrategy (replicated state only); else JitStrategy on `mesh`.

  Args:
    name: `config.strategy`, 'jit' or 'pmap'.
    mesh: `config.mesh` (a ConfigDict / mapping / 'data=2,fsdp=4' string / None: every
      device on 'data'); 'pmap' takes only the default.

  Returns:
    A `PmapStrategy` or a `JitStrategy`.

  Raises:
    ConfigError: a non-default mesh with 'pmap', or (jit, several processes) model*seq
      not dividing each process's devices.
    ValueError: a malformed mesh, or one that does not fit the devices
      (`sharding.MeshSpec`).
  """
  if name == "pmap":
    if not sharding_lib.MeshSpec.parse(mesh).is_default:
      raise ConfigError("config.mesh needs config.strategy='jit' (pmap only replicates).")
    return PmapStrategy()
  return JitStrategy(mesh)

