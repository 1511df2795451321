"""Swin checkpoints: timm (`swin_*_patch4_window7_224`) and the official Microsoft code.

Key map, checkpoint -> `attn_jax.vision.SwinTransformer` (unrolled names):

- `patch_embed.proj.weight` [C, 3, p, p] -> `patch_embed/kernel` [p, p, 3, C];
  `patch_embed.norm` -> `patch_norm`
- `layers.{s}.blocks.{b}.norm1` / `.norm2` -> `stage{s}_block{b}/norm1` / `norm2`
- `layers.{s}.blocks.{b}.attn.qkv` [3C, C] -> `.../window_attention/attn/W_{q,k,v}`;
  `attn.proj` -> `W_o`; `attn.relative_position_bias_table` -> `.../window_attention/
  relative_position_bias_table`
- `layers.{s}.blocks.{b}.mlp.fc{1,2}` -> `stage{s}_block{b}/mlp/fc{1,2}`
- timm `layers.{s+1}.downsample`, Microsoft `layers.{s}.downsample` -> `merge{s}/norm`,
  `merge{s}/reduction`
- `norm` -> `norm`; timm `head.fc`, Microsoft `head` -> `head`

The buffers `relative_position_index` (checked against the model's index) and `attn_mask`
are not parameters.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from attn_jax import functional as F
from attn_jax.pretrained.layout import Converted, Reader
from attn_jax.pretrained.report import CheckpointFormatError
from attn_jax.vision.swin import SwinTransformer

def is_swin(tensors) -> bool:
  return any(k.endswith("layers.0.blocks.0.attn.relative_position_bias_table") for k in tensors)


def _prefix(tensors) -> str:
  return "module." if "module.patch_embed.proj.weight" in tensors else ""


def _window_of(table: np.ndarray) -> int:
  side = math.isqrt(table.shape[0])
  return (side + 1) // 2


def from_swin(tensors, model: SwinTransformer, path: str, meta: dict[str, Any]) -> Converted:
  """A timm or Microsoft Swin state dict -> the model's unrolled names."""
  pre = _prefix(tensors)
  old = f"{pre}layers.0.downsample.reduction.weight" in tensors
  layout = "Microsoft Swin" if old else "timm Swin"
  r = Reader(tensors, path, layout, pre)
  c = Converted(layout, r)
  if r.has("absolute_pos_embed"):
    raise CheckpointFormatError(f"{path}: the checkpoint has an absolute position embedding "
                                "('absolute_pos_embed'), which attn_jax's Swin does not have.")
  w = r.get("patch_embed.proj.weight")
  c.put("patch_embed/kernel", w.transpose(2, 3, 1, 0), "patch_embed.proj.weight")
  c.put("patch_embed/bias", r.get("patch_embed.proj.bias"), "patch_embed.proj.bias")
  c.norm("patch_norm", "patch_embed.norm")
  stages = r.count("layers.{}.blocks.0.norm1.weight")
  depth = tuple(r.count(f"layers.{s}.blocks.{{}}.norm1.weight") for s in range(stages))
  if depth != tuple(model.depth):
    raise CheckpointFormatError(f"{path}: the checkpoint has blocks per stage {depth}, the model "
                                f"depth={tuple(model.depth)}; build the Swin with that depth.")
  for s in range(stages):
    for b in range(depth[s]):
      k, p = f"layers.{s}.blocks.{b}.", f"stage{s}_block{b}/"
      c.norm(p + "norm1", k + "norm1")
      table = r.get(k + "attn.relative_position_bias_table")
      c.put(p + "window_attention/relative_position_bias_table", table,
            k + "attn.relative_position_bias_table")
      if r.has(k + "attn.relative_position_index"):
        index = r.tensors[r.prefix + k + "attn.relative_position_index"]
        m = _window_of(table)
        if not np.array_equal(np.asarray(index), np.asarray(F.relative_position_index(m))):
          raise CheckpointFormatError(f"{path}: '{k}attn.relative_position_index' differs from "
                                      f"the index of a {m}x{m} window the model builds.")
      c.fused_qkv(p + "window_attention/attn", k + "attn.qkv")
      c.put(p + "window_attention/attn/W_o", r.get(k + "attn.proj.weight").T,
            k + "attn.proj.weight")
      c.put(p + "window_attention/attn/b_o", r.get(k + "attn.proj.bias"), k + "attn.proj.bias")
      c.norm(p + "norm2", k + "norm2")
      c.linear(p + "mlp/fc1", k + "mlp.fc1")
      c.linear(p + "mlp/fc2", k + "mlp.fc2")
  for s in range(stages - 1):
    k = f"layers.{s if old else s + 1}.downsample."
    c.norm(f"merge{s}/norm", k + "norm")
    c.linear(f"merge{s}/reduction", k + "reduction", bias=False)
  c.norm("norm", "norm")
  head = "head.fc" if r.has("head.fc.weight") else "head"
  if r.has(head + ".weight"):
    c.linear("head", head)
  eps = float(meta.get("norm_eps", 1e-5))
  if model.norm_eps != eps:
    c.notes.append(f"{layout} LayerNorms use eps={eps:g}, the model {model.norm_eps:g} (set "
                   f"norm_eps={eps:g} for the same outputs).")
  return c


def config_from(tensors, meta: dict[str, Any], num_classes: int | None) -> dict[str, Any]:
  """SwinTransformer constructor arguments that reproduce the checkpoint's architecture."""
  if meta:
    cfg = {k: v for k, v in meta.items() if k != "arch"}
  else:
    pre = _prefix(tensors)
    t = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    width, _, p, _ = t["patch_embed.proj.weight"].shape
    depth, heads = [], []
    while f"layers.{len(depth)}.blocks.0.norm1.weight" in t:
      s = len(depth)
      depth.append(sum(1 for k in t if k.startswith(f"layers.{s}.blocks.")
                       and k.endswith(".norm1.weight")))
      heads.append(int(t[f"layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1]))
    cfg = dict(patch_size=int(p), width=int(width), depth=tuple(depth), num_heads=tuple(heads),
               window_size=_window_of(t["layers.0.blocks.0.attn.relative_position_bias_table"]),
               mlp_ratio=float(t["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / width),
               norm_eps=1e-5)
    head = "head.fc.weight" if "head.fc.weight" in t else "head.weight"
    if head in t:
      cfg["num_classes"] = int(t[head].shape[0])
  if num_classes is not None:
    cfg["num_classes"] = num_classes
  cfg.setdefault("num_classes", 1000)
  for k in ("depth", "num_heads"):
    cfg[k] = tuple(cfg[k])
  return cfg


def to_timm(model: SwinTransformer, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The model's flat unrolled params -> a timm (>= 0.9) SwinTransformer state dict."""
  sd = {"patch_embed.proj.weight": flat["patch_embed/kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": flat["patch_embed/bias"],
        "patch_embed.norm.weight": flat["patch_norm/scale"],
        "patch_embed.norm.bias": flat["patch_norm/bias"]}
  for s, depth in enumerate(model.depth):
    for b in range(depth):
      k, p = f"layers.{s}.blocks.{b}.", f"stage{s}_block{b}/"
      a = p + "window_attention/"
      for n in ("norm1", "norm2"):
        sd[k + f"{n}.weight"], sd[k + f"{n}.bias"] = flat[p + f"{n}/scale"], flat[p + f"{n}/bias"]
      sd[k + "attn.relative_position_bias_table"] = flat[a + "relative_position_bias_table"]
      sd[k + "attn.qkv.weight"] = np.concatenate([flat[a + f"attn/W_{n}"].T for n in "qkv"])
      sd[k + "attn.qkv.bias"] = np.concatenate([flat[a + f"attn/b_{n}"] for n in "qkv"])
      sd[k + "attn.proj.weight"] = flat[a + "attn/W_o"].T
      sd[k + "attn.proj.bias"] = flat[a + "attn/b_o"]
      for n in ("fc1", "fc2"):
        sd[k + f"mlp.{n}.weight"] = flat[p + f"mlp/{n}/kernel"].T
        sd[k + f"mlp.{n}.bias"] = flat[p + f"mlp/{n}/bias"]
    if s > 0:
      k, p = f"layers.{s}.downsample.", f"merge{s - 1}/"
      sd[k + "norm.weight"], sd[k + "norm.bias"] = flat[p + "norm/scale"], flat[p + "norm/bias"]
      sd[k + "reduction.weight"] = flat[p + "reduction/kernel"].T
  sd["norm.weight"], sd["norm.bias"] = flat["norm/scale"], flat["norm/bias"]
  sd["head.fc.weight"], sd["head.fc.bias"] = flat["head/kernel"].T, flat["head/bias"]
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def export_config(model: SwinTransformer) -> dict[str, Any]:
  """The architecture as JSON-able constructor arguments (stored in exported files)."""
  return dict(arch="swin", num_classes=model.num_classes, patch_size=model.patch_size,
              window_size=model.window_size, width=model.width, depth=list(model.depth),
              num_heads=list(model.num_heads), mlp_ratio=model.mlp_ratio,
              norm_eps=model.norm_eps)
