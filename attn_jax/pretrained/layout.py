"""The project models' parameter trees: flat paths, unrolled <-> scanned layouts, shapes.

Converters work on the *unrolled* layout as a flat {'block0/attn/W_q': array} dict; `to_model`
turns it into the tree of the model at hand (`scan_layers` stacks the blocks with
`attn_jax.layers.stack_params`: ViT `block_scan`, Swin `stage{s}_pair_scan/block{0,1}`).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.layers import stack_params, unstack_params
from attn_jax.pretrained.report import CheckpointFormatError
from attn_jax.vision.swin import SwinTransformer
from attn_jax.vision.vit import ViT


def model_kind(model: nn.Module) -> str:
  """'vit' | 'swin'; anything else is an error."""
  if isinstance(model, ViT):
    return "vit"
  if isinstance(model, SwinTransformer):
    return "swin"
  raise CheckpointFormatError(f"pretrained checkpoints load into attn_jax ViT or "
                              f"SwinTransformer models, not {type(model).__name__}.")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  out: dict[str, Any] = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def unrolled(model: nn.Module, tree: Mapping[str, Any]) -> dict[str, Any]:
  """The model's params (either layout) -> the unrolled nested layout."""
  tree = dict(tree)
  if not model.scan_layers:
    return tree
  if model_kind(model) == "vit":
    return unstack_params(tree, "block")
  for s in range(len(model.depth)):
    tree = unstack_params(tree, f"stage{s}_pair")
    for k in range(model.depth[s] // 2):
      pair = tree.pop(f"stage{s}_pair{k}")
      tree[f"stage{s}_block{2 * k}"] = pair["block0"]
      tree[f"stage{s}_block{2 * k + 1}"] = pair["block1"]
  return tree


def to_model(model: nn.Module, tree: Mapping[str, Any]) -> dict[str, Any]:
  """Unrolled nested params -> the model's own layout (stacked with `scan_layers`)."""
  tree = dict(tree)
  if not model.scan_layers:
    return tree
  if model_kind(model) == "vit":
    return stack_params(tree, "block", model.depth)
  for s in range(len(model.depth)):
    for k in range(model.depth[s] // 2):
      tree[f"stage{s}_pair{k}"] = {"block0": tree.pop(f"stage{s}_block{2 * k}"),
                                   "block1": tree.pop(f"stage{s}_block{2 * k + 1}")}
    tree = stack_params(tree, f"stage{s}_pair", model.depth[s] // 2)
  return tree


def default_image_size(model: nn.Module, grid: tuple[int, int] | None = None) -> tuple[int, int]:
  """The input size whose parameter shapes `load` targets when none is given.

  ViT: its `posemb_grid` (else `grid`, the checkpoint's patch grid; else 224). Swin: the size
  at which the last stage is one window (224 for patch 4, window 7, four stages).
  """
  if model_kind(model) == "vit":
    g = model.posemb_grid or grid
    return (g[0] * model.patch_size, g[1] * model.patch_size) if g else (224, 224)
  side = model.patch_size * model.window_size * 2 ** (len(model.depth) - 1)
  return side, side


def _dummy(image_size: tuple[int, int], channels: int = 3) -> jax.Array:
  return jnp.zeros((1, image_size[0], image_size[1], channels), jnp.float32)


def _views(tree):
  """ShapeDtypeStructs -> zero-stride NumPy arrays of those shapes (nothing allocated)."""
  return jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), tree)


def param_shapes(model: nn.Module, image_size: tuple[int, int],
                 channels: int = 3) -> dict[str, np.ndarray]:
  """Flat unrolled {path: zero-stride array} with the shapes and dtypes of `model`'s params
  for images of `image_size` (computes nothing: `jax.eval_shape`)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), _dummy(image_size, channels)))
  return flatten(unrolled(model, _views(dict(shapes["params"]))))


def fresh_value(path: str, like: np.ndarray, rng: jax.Array) -> np.ndarray:
  """A new value for a parameter the checkpoint does not give: classifier heads start at
  zero (as the ViT's head and big_vision's fine-tuning do); a pre-logits kernel gets
  LeCun-normal values and its bias zeros."""
  if path == "pre_logits/kernel":
    init = jax.nn.initializers.lecun_normal()
    return np.asarray(init(rng, like.shape, jnp.float32)).astype(like.dtype)
  return np.zeros(like.shape, like.dtype)


def as_flat(model: nn.Module, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A params tree of `model` (either layout) -> flat unrolled host arrays."""
  if "params" in params:   # a whole variables dict
    params = params["params"]
  return flatten(unrolled(model, jax.device_get(dict(params))))


HEAD = re.compile(r"^(head|pre_logits)/")


class Reader:
  """Checkpoint tensors under an optional key prefix, remembering which keys were used.

  `get(key)` raises CheckpointFormatError naming the missing key and the layout that
  should have it.
  """

  def __init__(self, tensors: Mapping[str, np.ndarray], path: str, layout: str,
               prefix: str = ""):
    self.tensors, self.path, self.layout, self.prefix = tensors, path, layout, prefix
    self.used: set[str] = set()

  def has(self, key: str) -> bool:
    return self.prefix + key in self.tensors

  def get(self, key: str) -> np.ndarray:
    full = self.prefix + key
    if full not in self.tensors:
      raise CheckpointFormatError(f"{self.path}: missing key '{full}', which a {self.layout} "
                                  "checkpoint has.")
    self.used.add(full)
    return np.asarray(self.tensors[full])

  def count(self, pattern: str) -> int:
    """How many of pattern.format(0), pattern.format(1), ... exist, in a row."""
    n = 0
    while self.has(pattern.format(n)):
      n += 1
    return n

  def unused(self, reasons: Mapping[str, str] | None = None) -> dict[str, str]:
    """Checkpoint key -> why unused: the first matching regex of `reasons`, else a default."""
    out = {}
    for k in self.tensors:
      if k in self.used:
        continue
      why = next((v for rx, v in (reasons or {}).items() if re.search(rx, k)), None)
      out[k] = why or ("outside the model's prefix" if not k.startswith(self.prefix)
                       else "no counterpart in the model")
    return out


class Converted:
  """A checkpoint in the model's unrolled naming: `arrays[path]` (values as stored) came
  from checkpoint key `sources[path]`; `grid` is the position table's patch grid and
  `n_extra` its leading non-grid rows (ViT)."""

  def __init__(self, layout: str, reader: Reader):
    self.layout, self.reader = layout, reader
    self.arrays: dict[str, np.ndarray] = {}
    self.sources: dict[str, str] = {}
    self.unused: dict[str, str] = {}
    self.notes: list[str] = []
    self.grid: tuple[int, int] | None = None
    self.n_extra = 0

  def put(self, path: str, array: np.ndarray, source: str) -> None:
    self.arrays[path] = array
    self.sources[path] = source

  def norm(self, path: str, key: str, torch_names: bool = True) -> None:
    """A LayerNorm: torch `key.weight` / `key.bias`, or flax `key/scale` / `key/bias`."""
    scale, bias = ("weight", "bias") if torch_names else ("scale", "bias")
    sep = "." if torch_names else "/"
    self.put(f"{path}/scale", self.reader.get(f"{key}{sep}{scale}"), f"{key}{sep}{scale}")
    self.put(f"{path}/bias", self.reader.get(f"{key}{sep}bias"), f"{key}{sep}bias")

  def linear(self, path: str, key: str, bias: bool = True) -> None:
    """A torch Linear `key.weight` [out, in] (+ `key.bias`) -> flax `path/kernel` [in, out]."""
    self.put(f"{path}/kernel", self.reader.get(f"{key}.weight").T, f"{key}.weight")
    if bias:
      self.put(f"{path}/bias", self.reader.get(f"{key}.bias"), f"{key}.bias")

  def fused_qkv(self, path: str, key: str) -> None:
    """timm's fused `key.weight` [3D, D] (rows q, k, v; heads inside each) -> W_q, W_k, W_v
    [D, D] and b_q, b_k, b_v (zeros when the checkpoint has no qkv bias)."""
    w = self.reader.get(f"{key}.weight")
    if w.ndim != 2 or w.shape[0] != 3 * w.shape[1]:
      raise CheckpointFormatError(f"{self.reader.path}: '{key}.weight' has shape "
                                  f"{list(w.shape)}; a fused qkv weight is [3 * dim, dim].")
    has_bias = self.reader.has(f"{key}.bias")
    b = self.reader.get(f"{key}.bias") if has_bias else np.zeros(w.shape[0], w.dtype)
    for j, n in enumerate("qkv"):
      rows = slice(j * w.shape[1], (j + 1) * w.shape[1])
      self.put(f"{path}/W_{n}", w[rows].T, f"{key}.weight")
      self.put(f"{path}/b_{n}", b[rows], f"{key}.bias" if has_bias else "(no qkv bias: zeros)")
    if not has_bias and not any("no qkv bias" in n for n in self.notes):
      self.notes.append("the checkpoint has no qkv bias: the model's b_q, b_k, b_v are zeros "
                        "(the same function).")
