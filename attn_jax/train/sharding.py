"""Device meshes and the rules that shard the train state over them.

A mesh has the axes `('data', 'fsdp', 'seq', 'model')` (`config.mesh`; sizes multiply to
the number of devices, `data=-1` takes the devices the other axes leave):

- `data`: the batch is split over it, the state is replicated (data parallelism);
- `fsdp`: the batch is split over it too, and every parameter of at least
  `fsdp_min_size` elements is split along its largest axis divisible by the axis size
  (the tensor-parallel axis too when no other is: `('model', 'fsdp')`), with its
  optimizer state (fully sharded data parallelism: the step gathers the weights where the
  forward pass reads them, `JitStrategy.param_constraint`, and XLA reduce-scatters their
  gradients);
- `model`: tensor parallelism. Attention heads are split (`W_q`, `W_k`, `W_v` and their
  biases on the output = heads axis, `W_o` on its input axis) and so is the MLP hidden
  layer (`fc1` kernel and bias on the output axis, `fc2` kernel on its input axis);
- `seq`: sequence parallelism. The step splits every [batch, len] array of the batch along
  len over it and runs under `jax.set_mesh`, so `F.attention` (every `MultiHeadAttention`)
  runs ring attention (`attn_jax.functional.ring`); the state is replicated over it.

The leading layer axis of scanned stacks (`block_scan`, `layer_scan`, `..._scan`) is never
sharded. The default mesh (every device on `data`) is the 1-D mesh `('data',)`.
Optimizer state follows its parameter: a leaf of `opt_state` whose key path ends with a
parameter's path and has its shape gets that parameter's sharding; everything else
(counters, PRNG key, step, batch statistics) is replicated.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "seq", "model")
BATCH_AXES = ("data", "fsdp")
_QKV = ("W_q", "W_k", "W_v", "b_q", "b_k", "b_v")


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """Axis sizes of a mesh (`data=-1`: whatever the other axes leave) and the FSDP threshold."""
  data: int = -1
  fsdp: int = 1
  seq: int = 1
  model: int = 1
  fsdp_min_size: int = 2 ** 14

  @classmethod
  def parse(cls, spec: Any = None) -> "MeshSpec":
    """None | '' | 'data=2,fsdp=4,model=1' | a mapping / ConfigDict with these keys."""
    if spec is None or isinstance(spec, MeshSpec):
      return spec or cls()
    if isinstance(spec, str):
      items = {}
      for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
          raise ValueError(f"mesh {spec!r}: expected 'axis=size,...', got {part!r}.")
        items[key.strip()] = int(value)
    else:
      items = dict(spec.items() if hasattr(spec, "items") else spec)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in items:
      if key not in known:
        raise ValueError(f"mesh: unknown key {key!r}; known: {sorted(known)}.")
    return cls(**{k: int(v) for k, v in items.items()})

  @property
  def is_default(self) -> bool:
    return self.fsdp == self.seq == self.model == 1 and self.data in (-1, 0)

  def sizes(self, num_devices: int) -> dict[str, int]:
    """{'data', 'fsdp', 'seq', 'model'} -> size for `num_devices`; ValueError if impossible."""
    fixed = {"fsdp": self.fsdp, "seq": self.seq, "model": self.model}
    for k, v in fixed.items():
      if v < 1:
        raise ValueError(f"mesh.{k}={v} must be >= 1.")
    rest = math.prod(fixed.values())
    data = self.data
    if data in (-1, 0):
      if num_devices % rest:
        raise ValueError(f"mesh fsdp*seq*model={rest} does not divide the {num_devices} devices.")
      data = num_devices // rest
    elif data < 1:
      raise ValueError(f"mesh.data={data} must be >= 1 (or -1: the remaining devices).")
    if data * rest != num_devices:
      raise ValueError(f"mesh data={data} x fsdp={self.fsdp} x seq={self.seq} x "
                       f"model={self.model} = {data * rest} devices; there are {num_devices}.")
    if self.fsdp_min_size < 0:
      raise ValueError(f"mesh.fsdp_min_size={self.fsdp_min_size} must be >= 0.")
    return {"data": data, **fixed}

  def describe(self, num_devices: int) -> str:
    """'data=2,fsdp=4,model=1' style (axes of size 1 omitted, except data)."""
    s = self.sizes(num_devices)
    return ",".join(f"{k}={v}" for k, v in s.items() if k == "data" or v > 1)


def make_mesh(spec: Any = None, devices: list | None = None) -> Mesh:
  """The mesh of `spec` (see `MeshSpec.parse`) over `devices` (default: all of them).

  The default spec gives the 1-D mesh ('data',); any other gives all four axes (in the
  order of `AXES`: 'model' innermost, i.e. on the closest devices). All axes are
  `AxisType.Auto`: XLA propagates the shardings through the model.

  Args:
    spec: a `MeshSpec`, None / '' (every device on 'data'), an 'axis=size,...' string or
      a mapping / ConfigDict of axis sizes.
    devices: the devices to lay out (default `jax.devices()`, every process's).

  Returns:
    A `jax.sharding.Mesh` of axes ('data',) or `AXES`.

  Raises:
    ValueError: a malformed spec, or axis sizes that do not multiply to len(devices).
  """
  spec = MeshSpec.parse(spec)
  devices = list(jax.devices() if devices is None else devices)
  auto = jax.sharding.AxisType.Auto   # XLA propagates the shardings through the model
  if spec.is_default:
    return jax.make_mesh((len(devices),), ("data",), axis_types=(auto,), devices=devices)
  sizes = spec.sizes(len(devices))
  return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, axis_types=(auto,) * len(AXES),
                       devices=devices)


def axis_size(mesh: Mesh, name: str) -> int:
  """Size of axis `name` of `mesh` (1 when the mesh lacks it).

  Args:
    mesh: a Mesh (or anything with a `shape` mapping of axis sizes).
    name: an axis name, e.g. 'fsdp'.

  Returns:
    The axis size, an int >= 1.
  """
  return dict(mesh.shape).get(name, 1)


def batch_spec(mesh: Mesh) -> P:
  """Leading (batch) axis over ('data', 'fsdp') -- whichever of them the mesh has.

  Args:
    mesh: a mesh with 'data' and / or 'fsdp'.

  Returns:
    `P('data')`, `P('fsdp')` or `P(('data', 'fsdp'))`.
  """
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return P(axes[0] if len(axes) == 1 else axes)


def batch_shards(mesh: Mesh) -> int:
  """Number of pieces the batch is split into.

  Args:
    mesh: the mesh.

  Returns:
    size('data') * size('fsdp') (1 for an axis the mesh lacks).
  """
  return math.prod(axis_size(mesh, a) for a in BATCH_AXES)


def _key_name(k: Any) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], fsdp: int = 1, model: int = 1,
               fsdp_min_size: int = 2 ** 14) -> P:
  """The PartitionSpec of one parameter from its path and shape (the module's rules).

  'model' splits the heads / hidden-units axis of `W_q`, `W_k`, `W_v`, their biases and
  `fc1` (output axis) and of `W_o` and the `fc2` kernel (input axis), when it divides;
  'fsdp' then splits the largest remaining divisible axis of a parameter of at least
  `fsdp_min_size` elements (with none: the 'model' axis as ('model', 'fsdp'), where that
  divides). The leading layer axis under a `*_scan` module stays whole.

  Args:
    path: the key names down to the parameter, e.g. ('block_scan', 'attn', 'W_q').
    shape: the parameter's shape.
    fsdp: devices on the mesh's 'fsdp' axis.
    model: devices on the mesh's 'model' axis.
    fsdp_min_size: smallest parameter (in elements) that 'fsdp' splits.

  Returns:
    A PartitionSpec with one entry per axis up to the last split one (`P()`: replicated).
  """
  ndim = len(shape)
  spec: list[Any] = [None] * ndim
  start = 1 if any(p.endswith("_scan") for p in path[:-1]) else 0   # the layer axis stays whole
  name, parent = path[-1] if path else "", path[-2] if len(path) > 1 else ""
  tp_dim = None                           # the heads / hidden-units axis
  if ndim > start and (name in _QKV or (parent == "fc1" and name in ("kernel", "bias"))):
    tp_dim = ndim - 1                     # q, k, v and fc1: on the output
  elif (name == "W_o" or (parent == "fc2" and name == "kernel")) and ndim - start == 2:
    tp_dim = ndim - 2                     # W_o and fc2: on the input
  if model > 1 and tp_dim is not None and shape[tp_dim] % model == 0:
    spec[tp_dim] = "model"
  if fsdp > 1 and math.prod(shape) >= max(fsdp_min_size, 1):
    free = [d for d in range(start, ndim) if spec[d] is None and shape[d] % fsdp == 0]
    if free:   # the largest axis; on a tie the width axis rather than heads / hidden units
      spec[max(free, key=lambda d: (shape[d], d != tp_dim, -d))] = "fsdp"
    elif spec[tp_dim or 0] == "model" and shape[tp_dim] % (model * fsdp) == 0:
      spec[tp_dim] = ("model", "fsdp")   # e.g. a q bias: split over both (model major)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def without_axis(spec: P, axis: str) -> P:
  """`spec` with mesh axis `axis` removed (that dimension replicated over it).

  Args:
    spec: a PartitionSpec, e.g. `P(None, ('model', 'fsdp'))`.
    axis: the mesh axis to drop, e.g. 'fsdp'.

  Returns:
    The PartitionSpec, e.g. `P(None, 'model')`.
  """
  def drop(entry):
    if isinstance(entry, tuple):
      rest = tuple(a for a in entry if a != axis)
      return rest if len(rest) > 1 else (rest[0] if rest else None)
    return None if entry == axis else entry
  return P(*(drop(e) for e in spec))


def param_specs(params: Any, mesh: Mesh, fsdp_min_size: int = 2 ** 14) -> Any:
  """A PartitionSpec for every leaf of a parameter tree (`param_spec` on each).

  Args:
    params: a parameter pytree of arrays or ShapeDtypeStructs.
    mesh: the mesh (its 'fsdp' and 'model' sizes; 1 where it lacks them).
    fsdp_min_size: smallest parameter (in elements) that 'fsdp' splits.

  Returns:
    A pytree of `params`' structure with a PartitionSpec per leaf.
  """
  fsdp, model = axis_size(mesh, "fsdp"), axis_size(mesh, "model")
  return jax.tree_util.tree_map_with_path(
      lambda path, x: param_spec(tuple(_key_name(k) for k in path), tuple(np.shape(x)), fsdp,
                                 model, fsdp_min_size), params)


def follow_params(tree: Any, params: Any, specs: Any) -> Any:
  """PartitionSpecs for `tree` (an optimizer state): a leaf whose key path ends with the path
  of a parameter and has its shape gets that parameter's spec; other leaves P().

  Args:
    tree: the pytree to lay out, e.g. an optax state (arrays or ShapeDtypeStructs).
    params: the parameter pytree.
    specs: `params`' PartitionSpecs (`param_specs`).

  Returns:
    A pytree of `tree`'s structure with a PartitionSpec per leaf.
  """
  by_path: dict[tuple[str, ...], tuple[tuple[int, ...], P]] = {}
  for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(params),
                             jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, P))):
    by_path[tuple(_key_name(k) for k in path)] = (tuple(np.shape(x)), spec)

  def follow(path, x):
    names = tuple(_key_name(k) for k in path)
    for i in range(len(names)):
      hit = by_path.get(names[i:])
      if hit is not None and hit[0] == tuple(np.shape(x)):
        return hit[1]
    return P()

  return jax.tree_util.tree_map_with_path(follow, tree)


def state_specs(abstract_state: Any, mesh: Mesh, fsdp_min_size: int = 2 ** 14) -> Any:
  """PartitionSpecs of a TrainState-like tree (`params`, `opt_state` fields are sharded by
  the rules, every other field replicated); any other tree: all replicated.

  Args:
    abstract_state: the state (a dataclass with `params` and `replace`, such as
      `TrainState`; arrays or ShapeDtypeStructs), or any pytree.
    mesh: the mesh.
    fsdp_min_size: smallest parameter (in elements) that 'fsdp' splits.

  Returns:
    A tree of the state's structure (the same dataclass) with a PartitionSpec per leaf.
  """
  replicated = lambda t: jax.tree.map(lambda _: P(), t)
  if not (hasattr(abstract_state, "params") and hasattr(abstract_state, "replace")):
    return replicated(abstract_state)
  pspecs = param_specs(abstract_state.params, mesh, fsdp_min_size)
  fields = {f.name: replicated(getattr(abstract_state, f.name))
            for f in dataclasses.fields(abstract_state)}
  fields["params"] = pspecs
  if hasattr(abstract_state, "opt_state"):
    fields["opt_state"] = follow_params(abstract_state.opt_state, abstract_state.params, pspecs)
  return abstract_state.replace(**fields)


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp_min_size: int = 2 ** 14) -> Any:
  """`state_specs` as NamedShardings on `mesh`.

  Args:
    abstract_state: the state, as for `state_specs`.
    mesh: the mesh.
    fsdp_min_size: smallest parameter (in elements) that 'fsdp' splits.

  Returns:
    A tree of the state's structure with a NamedSharding per leaf (e.g. jit's
    `out_shardings`).
  """
  return jax.tree.map(lambda s: NamedSharding(mesh, s),
                      state_specs(abstract_state, mesh, fsdp_min_size),
                      is_leaf=lambda s: isinstance(s, P))


def bytes_per_device(tree: Any, shardings: Any) -> int:
  """Bytes one device holds of `tree` laid out by `shardings`: the largest shard of each leaf.

  Args:
    tree: a pytree of arrays or ShapeDtypeStructs.
    shardings: one `jax.sharding.Sharding` per leaf of `tree` (a pytree), or one for all.

  Returns:
    The total in bytes (shard shape x itemsize, summed over the leaves).

  Raises:
    ValueError: `shardings` has a different number of leaves than `tree`.
  """
  leaves = jax.tree.leaves(tree)
  shs = (jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
         if not isinstance(shardings, jax.sharding.Sharding) else [shardings] * len(leaves))
  total = 0
  for x, s in zip(leaves, shs, strict=True):
    shape = tuple(np.shape(x))
    total += math.prod(s.shard_shape(shape)) * np.dtype(x.dtype).itemsize
  return int(total)


def describe_specs(params: Any, specs: Any) -> Mapping[str, str]:
  """'path' -> 'shape -> spec' for every parameter (to print or test the layout).

  Args:
    params: a parameter pytree (arrays or ShapeDtypeStructs).
    specs: its PartitionSpecs (`param_specs`), in the same leaf order.

  Returns:
    e.g. {'block0/attn/W_q': "(128, 128) -> P(None, 'model')", ...}.
  """
  out = {}
  for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(specs, is_leaf=lambda t: isinstance(t, P))):
    out["/".join(_key_name(k) for k in path)] = f"{tuple(np.shape(x))} -> {s}"
  return out
