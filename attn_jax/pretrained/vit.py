"""ViT checkpoints: timm state dicts, google-research/vision_transformer and big_vision `.npz`.

Key map, timm | vision_transformer / big_vision -> `attn_jax.vision.ViT` (unrolled names):

- `patch_embed.proj.weight` [D, C, p, p] | `embedding/kernel` [p, p, C, D] -> `embedding/kernel`
- `cls_token` [1, 1, D] | `cls` -> `cls`
- `pos_embed` [1, 1 + N, D] | `Transformer/posembed_input/pos_embedding` [1, 1 + N, D], big_vision
  `pos_embedding` [1, N, D] (the class token gets no position) -> `pos_embedding` [1, 1 + N, D]
- `blocks.{i}.norm1` / `.norm2` | `encoderblock_{i}/LayerNorm_0` / `LayerNorm_{2,1}`
  -> `block{i}/norm1` / `norm2`
- `blocks.{i}.attn.qkv` [3D, D] | `MultiHeadDotProductAttention_{1,0}/{query,key,value}`
  [D, heads, head_dim] -> `block{i}/attn/W_{q,k,v}` [D, D]; `attn.proj` | `.../out`
  [heads, head_dim, D] -> `W_o`
- `blocks.{i}.mlp.fc{1,2}` | `MlpBlock_{3,0}/Dense_{0,1}` -> `block{i}/mlp/fc{1,2}`
- `norm` (GAP models: `fc_norm`, after pooling) | `Transformer/encoder_norm` -> `encoder_norm`
  (`fc_norm`)
- (none) | `pre_logits` -> `pre_logits`; `head` | `head` -> `head`

vision_transformer numbers the block parts `_1, _2, _3`, big_vision `_0, _1, _0`; big_vision's
scanned checkpoints hold one `Transformer/encoderblock/...` with a leading [depth] axis.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from attn_jax import functional as F
from attn_jax.pretrained.layout import Converted, Reader
from attn_jax.pretrained.report import CheckpointFormatError
from attn_jax.vision.vit import ViT

BIG_VISION_PREFIXES = ("params/img/", "params/", "opt/target/", "")
_UNSUPPORTED_TIMM = {
    "reg_token": "register tokens", "blocks.0.ls1.gamma": "layer scale",
    "blocks.0.attn.q_norm.weight": "query/key normalisation", "norm_pre.weight": "a pre-norm",
    "attn_pool.latent": "an attention-pooling (MAP) head", "dist_token": "a distillation token",
}


def is_timm(tensors) -> bool:
  return "patch_embed.proj.weight" in tensors and "blocks.0.attn.qkv.weight" in tensors


def big_vision_prefix(tensors) -> str | None:
  """The key prefix of a vision_transformer / big_vision checkpoint, or None if it is not one."""
  return next((p for p in BIG_VISION_PREFIXES if f"{p}embedding/kernel" in tensors), None)


def _check(model: ViT, path: str, what: str, ours: Any, theirs: Any, hint: str) -> None:
  if ours != theirs:
    raise CheckpointFormatError(f"{path}: the checkpoint has {what}={theirs!r}, the model "
                                f"{ours!r}; {hint}.")


def _position_table(c: Converted, model: ViT, table: np.ndarray, key: str, has_cls: bool,
                    cls_row: bool, grid: tuple[int, int] | None) -> None:
  """Stores the table as [1, n_extra + N, D] (a zero class-token row where it had none)."""
  table = table.reshape(1, -1, table.shape[-1])
  c.n_extra = 1 if has_cls else 0
  if has_cls and not cls_row:
    table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
    c.notes.append(f"'{key}' has no class-token row (the class token gets no position "
                   "embedding): a zero row is put first, the same function.")
  n = table.shape[1] - c.n_extra
  side = math.isqrt(n)
  c.grid = tuple(grid) if grid else ((side, side) if side * side == n else None)
  if model.posemb == "learned":
    c.put("pos_embedding", table, key)
  else:
    c.unused[key] = "the model computes sin-cos positions (posemb='sincos2d')"


def from_timm(tensors, model: ViT, path: str, meta: dict[str, Any]) -> Converted:
  """A timm VisionTransformer state dict -> the model's unrolled names (`meta`: the
  architecture an exported file states, else {})."""
  r = Reader(tensors, path, "timm ViT", "module." if "module.patch_embed.proj.weight" in tensors
             else "")
  c = Converted("timm ViT", r)
  for key, what in _UNSUPPORTED_TIMM.items():
    if r.has(key):
      raise CheckpointFormatError(f"{path}: the checkpoint uses {what} ('{key}'), which "
                                  "attn_jax's ViT does not have.")
  w = r.get("patch_embed.proj.weight")
  if w.ndim != 4:
    raise CheckpointFormatError(f"{path}: 'patch_embed.proj.weight' has shape {list(w.shape)}; "
                                "expected a conv kernel [dim, channels, p, p].")
  c.put("embedding/kernel", w.transpose(2, 3, 1, 0), "patch_embed.proj.weight")
  c.put("embedding/bias", r.get("patch_embed.proj.bias"), "patch_embed.proj.bias")
  has_cls = r.has("cls_token")
  _check(model, path, "pool", model.pool, "cls" if has_cls else "gap",
         "build the ViT with that pool")
  if has_cls:
    c.put("cls", r.get("cls_token").reshape(1, 1, -1), "cls_token")
  if r.has("pos_embed"):
    table = r.get("pos_embed")
    n = table.reshape(-1, table.shape[-1]).shape[0]
    cls_row = has_cls and math.isqrt(n) ** 2 != n    # timm no_embed_class: no class row
    _position_table(c, model, table, "pos_embed", has_cls, cls_row, meta.get("posemb_grid"))
  elif model.posemb == "learned":
    raise CheckpointFormatError(f"{path}: missing key 'pos_embed' (the model has a learned "
                                "position table).")
  depth = r.count("blocks.{}.norm1.weight")
  _check(model, path, "depth", model.depth, depth, "build the ViT with that depth")
  if "num_heads" in meta:
    _check(model, path, "num_heads", model.num_heads, meta["num_heads"], "build the ViT with that")
  for i in range(depth):
    b, p = f"blocks.{i}.", f"block{i}/"
    c.norm(p + "norm1", b + "norm1")
    c.fused_qkv(p + "attn", b + "attn.qkv")
    c.put(p + "attn/W_o", r.get(b + "attn.proj.weight").T, b + "attn.proj.weight")
    c.put(p + "attn/b_o", r.get(b + "attn.proj.bias"), b + "attn.proj.bias")
    c.norm(p + "norm2", b + "norm2")
    c.linear(p + "mlp/fc1", b + "mlp.fc1")
    c.linear(p + "mlp/fc2", b + "mlp.fc2")
  fc_norm = r.has("fc_norm.weight")
  _check(model, path, "fc_norm", model.fc_norm, fc_norm,
         "set fc_norm to match (timm GAP models normalise after pooling)")
  c.norm("fc_norm" if fc_norm else "encoder_norm", "fc_norm" if fc_norm else "norm")
  if r.has("head.weight"):
    c.linear("head", "head")
  act = meta.get("mlp_activation", "gelu")
  if model.mlp_activation != act:
    c.notes.append(f"the checkpoint's MLP uses {act!r}, the model {model.mlp_activation!r} "
                   f"(set mlp_activation={act!r} for the same outputs).")
  return c


def from_big_vision(tensors, model: ViT, path: str, meta: dict[str, Any]) -> Converted:
  """A vision_transformer or big_vision `.npz` -> the model's unrolled names."""
  prefix = big_vision_prefix(tensors) or ""
  vt = f"{prefix}Transformer/posembed_input/pos_embedding" in tensors
  layout = "vision_transformer ViT" if vt else "big_vision ViT"
  r = Reader(tensors, path, layout, prefix)
  c = Converted(layout, r)
  if r.has("MAPHead_0/probe"):
    raise CheckpointFormatError(f"{path}: the checkpoint has a MAP head ('{prefix}MAPHead_0'); "
                                "attn_jax's ViT pools with a class token or the mean only.")
  w = r.get("embedding/kernel")
  if w.ndim != 4:
    raise CheckpointFormatError(f"{path}: '{prefix}embedding/kernel' has shape "
                                f"{list(w.shape)}; expected a conv kernel [p, p, channels, dim].")
  c.put("embedding/kernel", w, "embedding/kernel")
  c.put("embedding/bias", r.get("embedding/bias"), "embedding/bias")
  has_cls = r.has("cls")
  _check(model, path, "pool", model.pool, "cls" if has_cls else "gap",
         "build the ViT with that pool ('token' classifier = 'cls')")
  if has_cls:
    c.put("cls", r.get("cls").reshape(1, 1, -1), "cls")
  pos_key = "Transformer/posembed_input/pos_embedding" if vt else "pos_embedding"
  if r.has(pos_key):
    _position_table(c, model, r.get(pos_key), pos_key, has_cls, vt, meta.get("posemb_grid"))
  elif model.posemb == "learned":
    raise CheckpointFormatError(f"{path}: missing key '{prefix}pos_embedding' (a big_vision "
                                "model with posemb='sincos2d' has none: build the ViT with "
                                "posemb='sincos2d').")
  else:
    c.notes.append("big_vision's sin-cos positions use the frequencies 1 / 10000^(i / "
                   "(D/4 - 1)), the model's 1 / 10000^(i / (D/4)) (MoCo v3): the position "
                   "encodings differ slightly.")
  scanned = r.has("Transformer/encoderblock/LayerNorm_0/scale")
  if scanned:
    depth = r.get("Transformer/encoderblock/LayerNorm_0/scale").shape[0]
  else:
    depth = r.count("Transformer/encoderblock_{}/LayerNorm_0/scale")
  _check(model, path, "depth", model.depth, depth, "build the ViT with that depth")
  first = "Transformer/encoderblock/" if scanned else "Transformer/encoderblock_0/"
  if r.has(first + "MultiHeadDotProductAttention_1/query/kernel"):
    mha, ln2, mlp = "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"
  else:
    mha, ln2, mlp = "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"
  for i in range(depth):
    b = "Transformer/encoderblock/" if scanned else f"Transformer/encoderblock_{i}/"
    take = lambda k: r.get(b + k)[i] if scanned else r.get(b + k)
    p = f"block{i}/"
    for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", ln2)):
      c.put(p + f"{ours}/scale", take(f"{theirs}/scale"), b + f"{theirs}/scale")
      c.put(p + f"{ours}/bias", take(f"{theirs}/bias"), b + f"{theirs}/bias")
    q = take(f"{mha}/query/kernel")                    # [D, heads, head_dim]
    if q.ndim != 3:
      raise CheckpointFormatError(f"{path}: '{b}{mha}/query/kernel' has shape {list(q.shape)}; "
                                  "expected [dim, heads, head_dim].")
    _check(model, path, "num_heads", model.num_heads, q.shape[1], "build the ViT with that")
    for n, name in (("q", "query"), ("k", "key"), ("v", "value")):
      kern = take(f"{mha}/{name}/kernel")
      c.put(p + f"attn/W_{n}", kern.reshape(kern.shape[0], -1), b + f"{mha}/{name}/kernel")
      c.put(p + f"attn/b_{n}", take(f"{mha}/{name}/bias").reshape(-1), b + f"{mha}/{name}/bias")
    out = take(f"{mha}/out/kernel")                    # [heads, head_dim, D]
    c.put(p + "attn/W_o", out.reshape(-1, out.shape[-1]), b + f"{mha}/out/kernel")
    c.put(p + "attn/b_o", take(f"{mha}/out/bias"), b + f"{mha}/out/bias")
    for j in range(2):
      for leaf in ("kernel", "bias"):
        c.put(p + f"mlp/fc{j + 1}/{leaf}", take(f"{mlp}/Dense_{j}/{leaf}"),
              b + f"{mlp}/Dense_{j}/{leaf}")
  c.norm("encoder_norm", "Transformer/encoder_norm", torch_names=False)
  _check(model, path, "fc_norm", model.fc_norm, False, "these checkpoints normalise before "
         "pooling: build the ViT with fc_norm=False")
  for name in ("pre_logits", "head"):
    if r.has(f"{name}/kernel"):
      c.put(f"{name}/kernel", r.get(f"{name}/kernel"), f"{name}/kernel")
      c.put(f"{name}/bias", r.get(f"{name}/bias"), f"{name}/bias")
  if model.mlp_activation != "gelu_tanh":
    c.notes.append(f"{layout} models use the tanh-approximate GELU; the model uses "
                   f"{model.mlp_activation!r} (set mlp_activation='gelu_tanh' for the same "
                   "outputs).")
  return c


def config_from(tensors, meta: dict[str, Any], num_classes: int | None) -> dict[str, Any]:
  """ViT constructor arguments that reproduce the checkpoint's architecture (`meta`: the
  architecture an exported file states; timm files without it get 64-wide heads)."""
  if meta:
    cfg = {k: v for k, v in meta.items() if k != "arch"}
  elif is_timm(tensors):
    pre = "module." if "module.patch_embed.proj.weight" in tensors else ""
    t = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    width, _, p, _ = t["patch_embed.proj.weight"].shape
    cfg = dict(patch_size=int(p), width=int(width), depth=sum(
        1 for k in t if k.startswith("blocks.") and k.endswith(".norm1.weight")),
        num_heads=max(int(width) // 64, 1), mlp_dim=int(t["blocks.0.mlp.fc1.weight"].shape[0]),
        pool="cls" if "cls_token" in t else "gap", fc_norm="fc_norm.weight" in t)
    if "head.weight" in t:
      cfg["num_classes"] = int(t["head.weight"].shape[0])
  else:
    pre = big_vision_prefix(tensors)
    if pre is None:
      raise CheckpointFormatError("not a ViT checkpoint (no 'patch_embed.proj.weight' or "
                                  "'embedding/kernel').")
    t = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
    p, _, _, width = t["embedding/kernel"].shape
    scanned = "Transformer/encoderblock/LayerNorm_0/scale" in t
    first = "Transformer/encoderblock/" if scanned else "Transformer/encoderblock_0/"
    mha = next(k for k in t if k.startswith(first) and k.endswith("query/kernel"))
    fc1 = next(k for k in t if k.startswith(first) and k.endswith("Dense_0/kernel"))
    depth = (t[first + "LayerNorm_0/scale"].shape[0] if scanned else
             sum(1 for k in t if k.startswith("Transformer/encoderblock_")
                 and k.endswith("/LayerNorm_0/scale")))
    cfg = dict(patch_size=int(p), width=int(width), depth=int(depth),
               num_heads=int(t[mha].shape[-2]), mlp_dim=int(t[fc1].shape[-1]),
               pool="cls" if "cls" in t else "gap", mlp_activation="gelu_tanh")
    if "pos_embedding" not in t and "Transformer/posembed_input/pos_embedding" not in t:
      cfg["posemb"] = "sincos2d"
    if "pre_logits/kernel" in t:
      cfg["representation_size"] = int(t["pre_logits/kernel"].shape[-1])
    if "head/kernel" in t:
      cfg["num_classes"] = int(t["head/kernel"].shape[-1])
  if num_classes is not None:
    cfg["num_classes"] = num_classes
  cfg.setdefault("num_classes", 1000)
  if cfg.get("posemb_grid"):
    cfg["posemb_grid"] = tuple(cfg["posemb_grid"])
  return cfg


def to_timm(model: ViT, flat: dict[str, np.ndarray],
            image_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """The model's flat unrolled params -> a timm VisionTransformer state dict (NumPy).

  A 'sincos2d' model gets its computed table as `pos_embed` (needs `posemb_grid` or
  `image_size`). timm's ViT has no pre-logits layer, so a model with one cannot be exported.
  """
  if "pre_logits/kernel" in flat:
    raise ValueError("export_timm: timm's VisionTransformer has no pre-logits layer; this ViT "
                     f"has representation_size={model.representation_size}.")
  sd = {"patch_embed.proj.weight": flat["embedding/kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": flat["embedding/bias"]}
  if model.pool == "cls":
    sd["cls_token"] = flat["cls"]
  if model.posemb == "learned":
    sd["pos_embed"] = flat["pos_embedding"]
  else:
    grid = model.posemb_grid or (image_size and (image_size[0] // model.patch_size,
                                                 image_size[1] // model.patch_size))
    if not grid:
      raise ValueError("export_timm: a 'sincos2d' ViT needs posemb_grid or image_size to write "
                       "its position table.")
    pe = np.asarray(F.sincos_2d_positions(grid[0], grid[1], model.width))[None]
    extra = np.zeros((1, 1 if model.pool == "cls" else 0, model.width), pe.dtype)
    sd["pos_embed"] = np.concatenate([extra, pe], axis=1).astype(flat["embedding/bias"].dtype)
  for i in range(model.depth):
    b, p = f"blocks.{i}.", f"block{i}/"
    for n in ("norm1", "norm2"):
      sd[b + f"{n}.weight"], sd[b + f"{n}.bias"] = flat[p + f"{n}/scale"], flat[p + f"{n}/bias"]
    sd[b + "attn.qkv.weight"] = np.concatenate([flat[p + f"attn/W_{n}"].T for n in "qkv"])
    sd[b + "attn.qkv.bias"] = np.concatenate([flat[p + f"attn/b_{n}"] for n in "qkv"])
    sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = flat[p + "attn/W_o"].T, flat[
        p + "attn/b_o"]
    for n in ("fc1", "fc2"):
      sd[b + f"mlp.{n}.weight"] = flat[p + f"mlp/{n}/kernel"].T
      sd[b + f"mlp.{n}.bias"] = flat[p + f"mlp/{n}/bias"]
  norm = "fc_norm" if model.fc_norm else "encoder_norm"
  timm_norm = "fc_norm" if model.fc_norm else "norm"
  sd[f"{timm_norm}.weight"], sd[f"{timm_norm}.bias"] = flat[f"{norm}/scale"], flat[f"{norm}/bias"]
  sd["head.weight"], sd["head.bias"] = flat["head/kernel"].T, flat["head/bias"]
  return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def export_config(model: ViT, grid: tuple[int, int] | None) -> dict[str, Any]:
  """The architecture as JSON-able constructor arguments (stored in exported files)."""
  return dict(arch="vit", num_classes=model.num_classes, patch_size=model.patch_size,
              width=model.width, depth=model.depth, num_heads=model.num_heads,
              mlp_dim=model.mlp_dim, pool=model.pool, posemb=model.posemb,
              posemb_grid=list(grid) if grid else None, mlp_activation=model.mlp_activation,
              fc_norm=model.fc_norm)
