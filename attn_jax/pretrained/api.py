"""`load`, `model_for`, `export_timm`, `export_run`: checkpoints in and out of the project's
ViT and Swin."""
from __future__ import annotations

import json
import os
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from attn_jax.pretrained import io
from attn_jax.pretrained import layout as L
from attn_jax.pretrained import swin as swin_ckpt
from attn_jax.pretrained import vit as vit_ckpt
from attn_jax.pretrained.report import CheckpointFormatError, LoadReport, shape_str
from attn_jax.pretrained.resample import resample_bias_table, resample_posemb, square_grid
from attn_jax.vision.swin import SwinTransformer
from attn_jax.vision.vit import ViT

FORMATS = ("auto", "timm", "big_vision")
_UNUSED = {r"relative_position_index$": "buffer (equal to the index the model builds)",
           r"attn_mask$": "buffer (the model builds its own masks)",
           r"^opt/": "optimizer state", r"pre_logits": "no pre-logits layer in the model"}
_HEAD = re.compile(r"^head/")
_FRESH_OK = re.compile(r"^(head|pre_logits)/")   # may be missing: initialised instead


def detect(tensors, fmt: str = "auto", path: str = "checkpoint") -> tuple[str, str]:
  """-> (family 'vit' | 'swin', layout 'timm' | 'big_vision'), or CheckpointFormatError."""
  if fmt not in FORMATS:
    raise ValueError(f"format={fmt!r}; expected one of {FORMATS}.")
  if swin_ckpt.is_swin(tensors):
    found = ("swin", "timm")
  elif vit_ckpt.is_timm(tensors):
    found = ("vit", "timm")
  elif vit_ckpt.big_vision_prefix(tensors) is not None:
    found = ("vit", "big_vision")
  else:
    keys = sorted(tensors)[:6]
    raise CheckpointFormatError(f"{path}: unknown architecture: neither a timm ViT / Swin nor a "
                                f"vision_transformer / big_vision ViT (keys {keys} ...).")
  if fmt != "auto" and found[1] != fmt:
    raise CheckpointFormatError(f"{path}: format={fmt!r} but the keys are a {found[1]} "
                                f"{found[0]}'s.")
  return found


def _meta(metadata: dict[str, str]) -> dict[str, Any]:
  """The architecture an exported file states (safetensors metadata 'attn_jax'), or {}."""
  try:
    meta = json.loads(metadata.get("attn_jax", "{}"))
  except json.JSONDecodeError:
    return {}
  return meta if isinstance(meta, dict) else {}


def _as_model(model_or_config, num_classes: int | None) -> nn.Module:
  """A ViT / SwinTransformer, or one built from a run config or its `config.model`."""
  if isinstance(model_or_config, nn.Module):
    return model_or_config
  cfg = model_or_config
  if "model" in cfg:   # a whole run config
    num_classes = num_classes or cfg.data.get("num_classes") or None
    cfg = cfg.model
  if not num_classes:
    raise ValueError("load(): building the model from a config needs num_classes.")
  from attn_jax.train import models as M
  return M.build_model(cfg, {"num_classes": num_classes})[0]


def model_for(path: str, num_classes: int | None = None, **overrides) -> nn.Module:
  """The ViT / SwinTransformer a checkpoint was made for (a new head with `num_classes`).

  Read from the shapes (and from the metadata of files written by `export_timm`); timm ViT
  files without it get 64-wide heads (true of timm's Ti/S/B/L).

  Args:
    path: the checkpoint file (`.npz`, `.safetensors`, `.pth`).
    num_classes: outputs of the head (default: the checkpoint's).
    **overrides: any other constructor attribute (e.g. `posemb_grid` for a new
      resolution, `window_size`, `dtype`).

  Returns:
    An unbound `ViT` or `SwinTransformer`.
  """
  tensors, metadata = io.read_checkpoint(path)
  family, _ = detect(tensors, "auto", path)
  meta = _meta(metadata)
  if family == "vit":
    cfg, cls = vit_ckpt.config_from(tensors, meta, num_classes), ViT
  else:
    cfg, cls = swin_ckpt.config_from(tensors, meta, num_classes), SwinTransformer
  cfg.update(overrides)
  return cls(**cfg)


def _new_grid(model: ViT, n: int, image_size) -> tuple[int, int]:
  if model.posemb_grid:
    return tuple(model.posemb_grid)
  if image_size:
    return image_size[0] // model.patch_size, image_size[1] // model.patch_size
  return square_grid(n, "the model's position table")


def load(model_or_config, path: str, *, num_classes: int | None = None,
         image_size: int | tuple[int, int] | None = None, format: str = "auto",
         load_head: bool = True, init_params: Any = None, rng: jax.Array | None = None,
         method: str = "bilinear") -> tuple[dict[str, Any], LoadReport]:
  """Loads a checkpoint file into the params tree of a project ViT or SwinTransformer.

  Args:
    model_or_config: the model (either `scan_layers`), or a run config / `config.model`
      (then `num_classes` is needed unless `config.data.num_classes` says it).
    path: `.npz` (vision_transformer / big_vision), `.safetensors` or `.pth` (timm, Microsoft).
    num_classes: classifier outputs when the model is built from a config.
    image_size: the input size the params are for (the ViT position table's grid, Swin's
      effective windows); default `layout.default_image_size`.
    format: 'auto' | 'timm' | 'big_vision' (the key layout; 'auto' reads it from the keys).
    load_head: False: a fresh classifier head even when its shape fits.
    init_params: the model's own initial params (either layout): their shapes are the
      target and their values fill whatever the checkpoint does not give (a new head).
      Default: shapes from `jax.eval_shape(model.init)` (nothing compiled), a new head
      zeros, a new pre-logits kernel LeCun normal from `rng`.
    rng: PRNG key for freshly initialised entries (default `jax.random.key(0)`).
    method: resampling of position / bias tables, 'bilinear' or 'bicubic'.

  Returns:
    (params: nested dict of NumPy arrays in the model's layout and param dtype, LoadReport).

  Raises:
    CheckpointFormatError: unknown architecture, a truncated file, missing keys, or a shape
      that cannot be converted (the message names the key and both shapes).
  """
  model = _as_model(model_or_config, num_classes)
  kind = L.model_kind(model)
  tensors, metadata = io.read_checkpoint(path)
  family, key_layout = detect(tensors, format, path)
  if family != kind:
    raise CheckpointFormatError(f"{path}: holds a {key_layout} {family.upper()}, but the model "
                                f"is a {type(model).__name__}.")
  meta = _meta(metadata)
  if meta and meta.get("arch") not in (None, kind):
    raise CheckpointFormatError(f"{path}: exported from a {meta['arch']} model, not a {kind}.")
  if family == "swin":
    conv = swin_ckpt.from_swin(tensors, model, path, meta)
  elif key_layout == "timm":
    conv = vit_ckpt.from_timm(tensors, model, path, meta)
  else:
    conv = vit_ckpt.from_big_vision(tensors, model, path, meta)
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  embed = "embedding/kernel" if kind == "vit" else "patch_embed/kernel"
  channels = conv.arrays[embed].shape[2]
  size = image_size or L.default_image_size(model, conv.grid)
  target = (L.as_flat(model, init_params) if init_params is not None
            else L.param_shapes(model, size, channels))
  report = LoadReport(path, conv.layout, notes=list(conv.notes))
  values, fresh, missing = {}, {}, []
  for key, spec in target.items():
    arr, src = conv.arrays.get(key), conv.sources.get(key, "")
    if arr is None:
      if _FRESH_OK.match(key):
        fresh[key] = "not in the checkpoint"
      else:
        missing.append(key)
      continue
    if _HEAD.match(key) and not load_head:
      fresh[key] = "load_head=False"
      report.unused[src] = "classifier head not loaded (load_head=False)"
    elif arr.shape == spec.shape:
      values[key] = arr
      report.loaded[key] = src
    elif key == "pos_embedding" and arr.ndim == 3 and arr.shape[2] == spec.shape[2]:
      grid = _new_grid(model, spec.shape[1] - conv.n_extra, image_size)
      if conv.grid is None:
        raise CheckpointFormatError(f"{path}: '{src}' {shape_str(arr.shape)}: cannot tell its "
                                    "patch grid (not square); cannot resample it.")
      values[key] = resample_posemb(arr, conv.n_extra, grid, conv.grid, method)
      report.resampled[key] = (f"{shape_str(arr.shape)} -> {shape_str(spec.shape)}: grid "
                               f"{conv.grid[0]}x{conv.grid[1]} -> {grid[0]}x{grid[1]}, {method}")
    elif (key.endswith("relative_position_bias_table") and arr.ndim == 2
          and arr.shape[1] == spec.shape[1]):
      new_window = (int(np.sqrt(spec.shape[0])) + 1) // 2
      values[key] = resample_bias_table(arr, new_window, method)
      old_window = (int(np.sqrt(arr.shape[0])) + 1) // 2
      report.resampled[key] = (f"{shape_str(arr.shape)} -> {shape_str(spec.shape)}: window "
                               f"{old_window} -> {new_window}, {method}")
    elif _FRESH_OK.match(key):
      fresh[key] = f"checkpoint {shape_str(arr.shape)}, model {shape_str(spec.shape)}"
      report.unused[src] = f"replaced: the model's {key} is {shape_str(spec.shape)}"
    else:
      raise CheckpointFormatError(f"{path}: '{src}' (-> {key}) has shape "
                                  f"{shape_str(arr.shape)}, which cannot become the model's "
                                  f"{shape_str(spec.shape)}.")
    if key in values and values[key].shape != spec.shape:
      raise CheckpointFormatError(f"{path}: '{src}' resampled to {shape_str(values[key].shape)},"
                                  f" the model's {key} is {shape_str(spec.shape)}.")
  if missing:
    raise CheckpointFormatError(f"{path}: the model needs {len(missing)} parameters the "
                                f"{conv.layout} checkpoint lacks: {missing[:6]}"
                                f"{' ...' if len(missing) > 6 else ''}.")
  for key, src in conv.sources.items():
    if key not in target:
      report.unused.setdefault(src, f"no such parameter in the model ({key})")
  for src, why in {**conv.reader.unused(_UNUSED), **conv.unused}.items():
    report.unused.setdefault(src, why)
  own = L.as_flat(model, init_params) if init_params is not None else None
  rng = rng if rng is not None else jax.random.key(0)
  for i, (key, why) in enumerate(fresh.items()):
    if own is not None:
      values[key], report.initialised[key] = own[key], f"{why}; the model's own init"
    else:
      values[key] = L.fresh_value(key, target[key], jax.random.fold_in(rng, i))
      how = "LeCun normal" if key == "pre_logits/kernel" else "zeros"
      report.initialised[key] = f"{why}; {how}"
  values = {k: _owned(v, target[k].dtype) for k, v in values.items()}
  return L.to_model(model, L.unflatten(values)), report


def _owned(x, dtype) -> np.ndarray:
  """A writable C-contiguous array of `dtype` (not a view into the file's bytes)."""
  x = np.asarray(x).astype(dtype, copy=False)
  return x if x.flags.writeable and x.flags.c_contiguous and x.base is None else np.array(x)


def _grid_of(model: ViT, flat: dict[str, np.ndarray], image_size) -> tuple[int, int] | None:
  if model.posemb_grid:
    return tuple(model.posemb_grid)
  if image_size:
    return image_size[0] // model.patch_size, image_size[1] // model.patch_size
  if "pos_embedding" in flat:
    return square_grid(flat["pos_embedding"].shape[1] - (model.pool == "cls"), "pos_embedding")
  return None


def to_timm_state_dict(model: nn.Module, params: Any,
                       image_size: int | tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """The model's params (either layout) -> a timm state dict {name: NumPy array}.

  Args:
    model: the `ViT` / `SwinTransformer` the params belong to.
    params: its params, unrolled or scanned.
    image_size: the input size (fixes the ViT position grid; default from the params).

  Returns:
    {timm key: array}, e.g. 'blocks.0.attn.qkv.weight' [3 * width, width].
  """
  flat = L.as_flat(model, params)
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  if L.model_kind(model) == "vit":
    return vit_ckpt.to_timm(model, flat, image_size)
  return swin_ckpt.to_timm(model, flat)


def export_timm(model: nn.Module, params: Any, path: str,
                image_size: int | tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """Writes the model's params as a timm-compatible checkpoint: `.safetensors` (NumPy
  writer; the architecture is stored in its metadata under 'attn_jax', so `model_for`
  rebuilds the model exactly) or `.pth` (needs torch). Returns the state dict written.

  timm builds the same network with e.g. `timm.create_model('vit_tiny_patch16_224',
  num_classes=...)` (ViT, `act_layer='gelu_tanh'` for a 'gelu_tanh' model) or
  `'swin_tiny_patch4_window7_224'` (Swin); `load_state_dict(..., strict=True)` accepts it.

  Args:
    model: the `ViT` / `SwinTransformer` the params belong to.
    params: its params, unrolled or scanned.
    path: output file, `.safetensors` or `.pth`.
    image_size: the input size (default from the params).

  Returns:
    The state dict written ({timm key: NumPy array}).
  """
  sd = to_timm_state_dict(model, params, image_size)
  if isinstance(image_size, int):
    image_size = (image_size, image_size)
  if L.model_kind(model) == "vit":
    config = vit_ckpt.export_config(model, _grid_of(model, L.as_flat(model, params), image_size))
  else:
    config = swin_ckpt.export_config(model)
  if os.path.splitext(path)[1].lower() in (".pth", ".pt", ".bin"):
    import torch
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, path)
  else:
    io.write_safetensors(path, sd, {"format": "pt", "attn_jax": json.dumps(config)})
  return sd


def export_run(workdir: str, path: str, step: int | None = None, best: bool = False) -> str:
  """Exports a training run's checkpoint (latest, `step`, or the best) with `export_timm`.

  Needs the run's saved config and data (the model is rebuilt from them).

  Args:
    workdir: the run's workdir (holds `config.json` and `checkpoints/`).
    path: output file, `.safetensors` or `.pth`.
    step: checkpoint step (default: the latest).
    best: the best checkpoint by `config.best_metric` instead.

  Returns:
    `path`.
  """
  from attn_jax.analysis.evaluation import restore
  from attn_jax.train import runconfig
  config = runconfig.load(workdir)
  if config is None:
    raise FileNotFoundError(f"{workdir}: no {runconfig.CONFIG_FILE}; is it a training run?")
  s, state, _ = restore(config, workdir, step, best)
  params = s.strategy.host_state(state).params
  export_timm(s.model, params, path, image_size=tuple(s.data.info["image_shape"][:2]))
  return path


def init_run_state(config, setup, state, verbose: bool = True):
  """A fresh run's state with its params from `config.init_from` (the runner's hook).

  `setup` is the run's `loop.Setup`, `state` its freshly initialised TrainState; the
  run's own initial params are the target shapes and fill what the checkpoint lacks
  (seeded by `config.seed`). The optimizer state is kept (it starts from zeros either way).
  Returns (state, LoadReport); the report is printed when `verbose`.
  """
  host = setup.strategy.host_state(state)
  info = setup.data.info
  size = tuple(info["image_shape"][:2]) if "image_shape" in info else None
  params, report = load(setup.model, config.init_from, image_size=size,
                        format=config.get("init_from_format", "auto"),
                        load_head=config.get("init_from_head", True), init_params=host.params)
  if verbose:
    print(report, flush=True)
  return setup.strategy.put_state(host.replace(params=params)), report
