"""A stack of identical blocks, unrolled or as one `nn.scan`, with optional rematerialisation.

Unrolled, block i has its own parameters under `<name><i>`; with `scan=True` one block is
scanned over the layers and its parameters (and cache / sown intermediates) carry a leading
`[depth]` axis under `<name>_scan`. `stack_params` / `unstack_params` convert checkpoints
between the two layouts, so a model trained one way loads the other way.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# jax.checkpoint policies by config name. 'none': store every activation (fastest, most
# memory); 'full': store only block inputs, recompute the rest in the backward pass;
# 'dots': keep the matmul outputs, recompute the cheap elementwise ops.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def run_stack(make_block: Callable[[str, int | None], nn.Module], x: jax.Array, *args: Any,
              depth: int, train: bool, per_layer: Mapping[str, Sequence[float]] | None = None,
              scan: bool = False, remat: str = "none", name: str = "block",
              returns_aux: bool = False, static: Mapping[str, Any] | None = None):
  """x = block_i(x, *args, train=train, **static, **per_layer[i]) for i < depth.

  Args:
    make_block: (name, layer index; None when scanned) -> a new block module (called
      inside the parent's compact method). Unrolled blocks may differ by index.
    x: the carried activations (any shape the block keeps).
    *args: arrays every block gets unchanged (memory, lengths, ...).
    depth: number of blocks.
    train: the training-mode flag (static).
    per_layer: keyword -> depth values (e.g. the stochastic-depth rate of each block).
    scan: one `nn.scan` over the blocks (compile time independent of depth).
    remat: a key of REMAT_POLICIES.
    name: parameter prefix (`<name><i>` unrolled, `<name>_scan` scanned).
    returns_aux: the block returns (x, aux); the last block's aux is returned too.
    static: further keyword arguments of every block call (Python values, not traced).

  Returns:
    x, or (x, last aux) with `returns_aux`.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"run_stack: remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}.")
  per_layer = dict(per_layer or {})
  for key, vals in per_layer.items():
    if len(vals) != depth:
      raise ValueError(f"run_stack: per_layer['{key}'] has {len(vals)} values for depth={depth}.")

  static = dict(static or {})

  def body(block, carry, layer_kw, *rest):
    out = block(carry, *rest, train=train, **static, **layer_kw)
    return out if returns_aux else (out, None)

  if remat != "none":
    body = nn.remat(body, policy=REMAT_POLICIES[remat], prevent_cse=not scan)
  if scan:
    scanned = nn.scan(body, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0,) + (nn.broadcast,) * len(args), length=depth)
    kw = {k: jnp.asarray(v, jnp.float32) for k, v in per_layer.items()}
    x, aux = scanned(make_block(f"{name}_scan", None), x, kw, *args)
    aux = None if aux is None else jax.tree.map(lambda a: a[-1], aux)
  else:
    aux = None
    for i in range(depth):
      x, aux = body(make_block(f"{name}{i}", i), x, {k: v[i] for k, v in per_layer.items()}, *args)
  return (x, aux) if returns_aux else x


def stack_params(tree: Mapping[str, Any], name: str, depth: int) -> dict[str, Any]:
  """Unrolled layout -> scanned: `<name>0..<name>{depth-1}` become `<name>_scan` with a
  leading [depth] axis on every leaf (applies at any nesting level of `tree`).

  Args:
    tree: a params dict, e.g. a ViT's with `block0` ... `block{depth-1}`.
    name: the layer prefix ('block', 'layer').
    depth: number of layers.

  Returns:
    The same dict with `<name>_scan`: every leaf [depth, *leaf_shape] (NumPy).
  """
  tree = dict(tree)
  keys = [f"{name}{i}" for i in range(depth)]
  if all(k in tree for k in keys):
    parts = [tree.pop(k) for k in keys]
    tree[f"{name}_scan"] = jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *parts)
  return {k: stack_params(v, name, depth) if isinstance(v, Mapping) else v
          for k, v in tree.items()}


def unstack_params(tree: Mapping[str, Any], name: str) -> dict[str, Any]:
  """Scanned layout -> unrolled: the inverse of `stack_params`.

  Args:
    tree: a params dict holding `<name>_scan` (leaves [depth, ...]) at any level.
    name: the layer prefix.

  Returns:
    The dict with `<name>0` ... `<name>{depth-1}`, leaves [*leaf_shape].
  """
  out = {}
  for k, v in tree.items():
    if k == f"{name}_scan":
      depth = jax.tree.leaves(v)[0].shape[0]
      for i in range(depth):
        out[f"{name}{i}"] = jax.tree.map(lambda a, i=i: a[i], v)
    elif isinstance(v, Mapping):
      out[k] = unstack_params(v, name)
    else:
      out[k] = v
  return out
