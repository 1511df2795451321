r"""Attention pictures of a trained run -> one PNG (default `<workdir>/<what>.png`).

    python -m experiments.visualize --config configs/multi30k_transformer.py:de_en \
        --workdir runs/m30k_tr_de_en --config.data.eval_split=test_2016_flickr \
        --what=translation --num=4 --out docs/m30k_tr_cross_attention.png

Restores the run's checkpoint (latest, `--step`, or `--best`) with the run's own config
(`attn_jax.analysis.evaluation.restore`), takes `--num` examples of the eval split and draws:

  translation  seq2seq (GRU + Bahdanau, Transformer): greedy-decoded eval sentences of at most
               --max_tokens source tokens, cross-attention of each output token over the source
  rollout      ViT: attention rollout of the class token over the patches of test images
  swin         Swin: regular and shifted window partition and the SW-MSA mask of stage 0
  stn          'stn_cnn': test images next to the Spatial Transformer's warped outputs
  gates        ResNet with se / eca / cbam: channel gates averaged per class over the test
               split (--num batches; 0 = all), first and last block
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

WHATS = ("translation", "rollout", "swin", "stn", "gates")
DEFAULT_NUM = {"translation": 4, "rollout": 8, "swin": 1, "stn": 8, "gates": 0}
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "dates_seq2seq.py")


# ----- arrays ------------------------------------------------------------------------------

def translation_items(model, params, data, num: int, max_tokens: int = 15) -> list[dict[str, Any]]:
  """Greedy-decodes `num` eval sentences with at most `max_tokens` source tokens (the shortest
  others when too few are that short) -> per sentence {'attention' [out_len, src_len] (rows:
  output tokens up to EOS, each a distribution over the source tokens incl. EOS),
  'src_tokens', 'tgt_tokens', 'reference', 'index' (position in the eval split)}."""
  from attn_jax.seq.decoding import greedy_decode
  from attn_jax.analysis.heatmaps import token_text
  tok_src, tok_tgt = data.info["src_tokenizer"], data.info["tgt_tokenizer"]
  raw = data.info.get("eval_text")
  cands = []                                    # (index, src ids incl. EOS, tgt_out ids)
  for batch in data.eval_batches():
    for i in np.flatnonzero(batch["mask"]):
      src = batch["src"][i]
      cands.append((len(cands), src[src != 0], batch["tgt_out"][i]))
  short = [c for c in cands if len(c[1]) - 1 <= max_tokens]
  rest = sorted((c for c in cands if len(c[1]) - 1 > max_tokens), key=lambda c: len(c[1]))
  picked = (short + rest)[:num]
  if not picked:
    raise ValueError("translation: the eval split is empty.")
  width = max(len(c[1]) for c in picked)
  src = np.zeros((len(picked), width), np.int32)
  for r, (_, ids, _) in enumerate(picked):
    src[r, :len(ids)] = ids
  out = greedy_decode(model, params, jnp.asarray(src), width + 10)
  tokens, attn = np.asarray(out.tokens), np.asarray(out.cross_attention, np.float32)
  items = []
  for r, (k, ids, tgt_out) in enumerate(picked):
    eos = np.flatnonzero(tokens[r] == 2)
    n_out = int(eos[0]) + 1 if len(eos) else tokens.shape[1]
    ref = raw[k][1] if raw else tok_tgt.decode(tgt_out)
    items.append({"attention": attn[r, :n_out, :len(ids)], "index": k, "reference": ref,
                  "src_tokens": [_label(token_text(tok_src, t)) for t in ids],
                  "tgt_tokens": [_label(token_text(tok_tgt, t)) for t in tokens[r, :n_out]]})
  return items


def _label(token: str) -> str:
  """A token as an axis label: a space (character vocabularies) shows as an open box."""
  return "\u2423" if token == " " else token


def eval_images(data, num: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `num` eval images and labels -> ([num, h, w, c] normalized, [num])."""
  images, labels = [], []
  for batch in data.eval_batches():
    keep = np.flatnonzero(batch["mask"])
    images.append(batch["image"][keep])
    labels.append(batch["label"][keep])
    if sum(len(x) for x in labels) >= num:
      break
  return np.concatenate(images)[:num], np.concatenate(labels)[:num]


def _apply_fn(model, **kwargs):
  """jit(variables, images) -> (logits, intermediates) of a classifier in eval mode."""
  def fn(variables, images):
    logits, state = model.apply(variables, images, train=False, mutable=["intermediates"],
                                **kwargs)
    return logits, state.get("intermediates", {})
  return jax.jit(fn)


def rollout_maps(model, variables, images: np.ndarray,
                 residual: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """ViT attention rollout over the patches, upsampled to the image.

  images: [n, h, w, c] -> (rollout [n, h, w] (the class token's row, or with pool='gap' the
  mean row over the patch tokens; sums to 1 over the patches up to the class token's share),
  predictions [n]). Uses every block's sown `block{i}/attn/attention_weights`, in block order.
  """
  from flax import traverse_util
  from attn_jax import functional as F
  logits, inter = _apply_fn(model)(variables, images)
  flat = traverse_util.flatten_dict(inter, sep="/")
  keys = [k for k in flat if re.fullmatch(r"block\d+/attn/attention_weights", k)]
  if not keys:
    raise ValueError("rollout: the model sowed no 'block{i}/attn/attention_weights' (a ViT with "
                     "sow_weights=True is needed).")
  keys.sort(key=lambda k: int(re.match(r"block(\d+)", k).group(1)))
  roll = np.asarray(F.attention_rollout([flat[k][0] for k in keys], residual))  # [n, T, T]
  p = model.patch_size
  gh, gw = images.shape[1] // p, images.shape[2] // p
  row = roll[:, 0, 1:] if model.pool == "cls" else roll.mean(axis=1)
  maps = row.reshape(-1, gh, gw)
  maps = np.repeat(np.repeat(maps, p, axis=1), p, axis=2)    # each patch covers p x p pixels
  return maps, np.asarray(jnp.argmax(logits, -1))


def stn_outputs(model, variables, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The SpatialTransformer 'stn' submodule's output and its theta.

  images: [n, h, w, c] -> (warped [n, h', w', c] (what the classifier sees), theta [n, 2, 3]).
  """
  from attn_jax.vision.stn import SpatialTransformer
  if "stn" not in variables["params"]:
    raise ValueError("stn: the model has no 'stn' submodule (use model.name='stn_cnn').")
  capture = lambda mdl, method: isinstance(mdl, SpatialTransformer) and method == "__call__"
  _, inter = _apply_fn(model, capture_intermediates=capture)(variables, images)
  return np.asarray(inter["stn"]["__call__"][0]), np.asarray(inter["stn"]["theta"][0])


def stn_rotation_fit(config, model, variables, data, num: int = 2000) -> dict[str, float]:
  """How the STN's warp follows the rotation applied to each test image.

  Recomputes each test image's fixed warp angle (`pipeline.eval_warp_rng`, as the eval
  preprocessing draws it) and reads the rotation of the STN's theta, atan2(theta[1,0],
  theta[0,0]) in degrees, over the first `num` test images. Returns {'r': Pearson
  correlation, 'slope': least-squares slope of STN angle on applied angle, 'n'}.
  """
  from attn_jax.data import pipeline as P
  from attn_jax.data import sources
  raw = sources.image_source(config.data, config.data.eval_split)
  images, _ = eval_images(data, num)
  applied = []
  for i in range(len(images)):
    img = np.asarray(raw[i]["image"])
    img = img if img.ndim == 3 else img[..., None]
    applied.append(P.draw_affine(P.eval_warp_rng(img), config.data.rotate,
                                 config.data.translate)[0])
  thetas = np.concatenate([stn_outputs(model, variables, images[k:k + 500])[1]
                           for k in range(0, len(images), 500)])
  stn = np.degrees(np.arctan2(thetas[:, 1, 0], thetas[:, 0, 0]))
  applied = np.asarray(applied)
  return {"r": float(np.corrcoef(applied, stn)[0, 1]),
          "slope": float(np.polyfit(applied, stn, 1)[0]), "n": int(len(applied))}


def _block_order(key: str) -> tuple[int, ...]:
  return tuple(int(n) for n in re.findall(r"\d+", key.split("/")[0]))


def gates_by_class(model, variables, batches: Iterator[dict[str, np.ndarray]], num_classes: int,
                   max_batches: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Channel gates ('gate' of SE/ECA, 'channel_gate' of CBAM) averaged per true class.

  Returns ({block path, e.g. 'stage0_block0/SqueezeExcitation_0/gate': [num_classes, C]} in
  block order, counts [num_classes]); padded eval examples (mask 0) are left out.
  """
  from flax import traverse_util
  fn = _apply_fn(model)
  sums: dict[str, np.ndarray] = {}
  counts = np.zeros(num_classes, np.int64)
  for b, batch in enumerate(batches):
    if max_batches and b >= max_batches:
      break
    _, inter = fn(variables, batch["image"])
    flat = traverse_util.flatten_dict(inter, sep="/")
    onehot = np.eye(num_classes)[batch["label"]] * batch["mask"][:, None]   # [b, K]
    counts += onehot.sum(0).astype(np.int64)
    for k, v in flat.items():
      if k.rsplit("/", 1)[-1] in ("gate", "channel_gate"):
        g = np.asarray(v[0], np.float64).reshape(v[0].shape[0], -1)        # [b, C]
        sums[k] = sums.get(k, 0.0) + onehot.T @ g
  if not sums:
    raise ValueError("gates: the model sowed no 'gate' / 'channel_gate' (a ResNet with "
                     "model.attention se, eca or cbam is needed).")
  means = {k: (sums[k] / np.maximum(counts, 1)[:, None]).astype(np.float32)
           for k in sorted(sums, key=_block_order)}
  return means, counts


# ----- one figure --------------------------------------------------------------------------

def _class_names(config, num_classes: int):
  from attn_jax.analysis.figures import CLASS_NAMES
  names = CLASS_NAMES.get(config.data.name)
  return names if names is not None and len(names) == num_classes else None


def _denormalize(config, images: np.ndarray) -> np.ndarray:
  c = images.shape[-1]
  mean = np.asarray(config.data.mean or [0.5] * c, np.float32)
  std = np.asarray(config.data.std or [0.5] * c, np.float32)
  return images * std + mean


def visualize(config, workdir: str, what: str, out: str | None = None, num: int | None = None,
              step: int | None = None, best: bool = False, max_tokens: int = 15) -> dict[str, Any]:
  """Restores `workdir`'s checkpoint and draws `what` (see the module docstring).

  Returns {'path': the PNG, 'step': the restored step, 'arrays': what was plotted}.
  """
  from attn_jax.analysis import figures as G
  from attn_jax.analysis.evaluation import restore
  if what not in WHATS:
    raise ValueError(f"--what must be one of {WHATS}, got {what!r}.")
  num = DEFAULT_NUM[what] if num is None else num
  out = out or os.path.join(workdir, f"{what}.png")
  from attn_jax.train.tasks import ClassificationTask, Seq2SeqTask
  s, host_state, step = restore(config, workdir, step, best)
  host_state = jax.device_get(host_state)
  model, data, name = s.model, s.data, config.model.name
  variables = {"params": host_state.params, **host_state.model_state}
  split = config.data.eval_split
  if what == "translation":
    if not isinstance(s.task, Seq2SeqTask):
      raise ValueError(f"--what=translation needs a seq2seq model, got model.name={name!r}.")
    items = translation_items(model, host_state.params, data, num, max_tokens)
    if name == "transformer":
      n_dec = model.decoder_depth or model.depth
      desc = (f"Transformer: cross-attention of the last decoder layer (of {n_dec}), "
              f"{model.num_heads} heads averaged")
    else:
      desc = f"{model.cell.upper()} encoder-decoder, {model.attention} attention"
    title = f"{desc}; greedy decoding of {split} sentences, step {step}"
    path = G.cross_attention_grid(
        [(it["attention"], it["src_tokens"], it["tgt_tokens"]) for it in items], out, title,
        captions=[f"#{it['index']} reference: {it['reference']}" for it in items])
    return {"path": path, "step": step, "arrays": items}
  if not isinstance(s.task, ClassificationTask):
    raise ValueError(f"--what={what} needs an image classifier, got model.name={name!r}.")
  num_classes = data.info["num_classes"]
  names = _class_names(config, num_classes)
  if what == "gates":
    gates, counts = gates_by_class(model, variables, data.eval_batches(), num_classes, num)
    keys = list(gates)
    chosen = {k: gates[k] for k in dict.fromkeys([keys[0], keys[-1]])}
    # Class specificity of a block: std over classes of each channel's mean gate, averaged
    # over channels (SE paper: early blocks class-agnostic, late blocks class-specific).
    spread = {k: float(g.std(axis=0).mean()) for k, g in chosen.items()}
    print("gate std across classes (mean over channels): " +
          ", ".join(f"{k}: {v:.3f}" for k, v in spread.items()))
    # Which classes share a late gate pattern: correlation of the class-centred gates.
    late = gates[keys[-1]] - gates[keys[-1]].mean(axis=0)
    corr = np.corrcoef(late)
    pairs = sorted(((corr[i, j], i, j) for i in range(num_classes)
                    for j in range(i + 1, num_classes)), reverse=True)[:4]
    label = lambda i: names[i] if names else str(i)
    print("most similar late gate patterns: " +
          ", ".join(f"{label(i)}~{label(j)} r={c:.2f}" for c, i, j in pairs))
    title = (f"ResNet + {config.model.get('attention', '?').upper()}: channel gates averaged per "
             f"class over {int(counts.sum())} {split} images, step {step}; std across classes "
             + " vs ".join(f"{v:.3f}" for v in spread.values()))
    path = G.gates_per_class(chosen, names, out, title, counts)
    return {"path": path, "step": step, "arrays": {"gates": gates, "counts": counts,
                                                   "class_spread": spread}}
  images, labels = eval_images(data, max(num, 1))
  if what == "rollout":
    if name != "vit":
      raise ValueError(f"--what=rollout needs model.name='vit', got {name!r}.")
    maps, preds = rollout_maps(model, variables, images)
    title = (f"ViT attention rollout ({model.depth} layers, heads averaged) over the patches, "
             f"{split} images, step {step}")
    path = G.rollout_overlay(_denormalize(config, images), maps, labels, out, names, preds, title)
    return {"path": path, "step": step, "arrays": {"rollout": maps, "predictions": preds}}
  if what == "stn":
    warped, theta = stn_outputs(model, variables, images)
    title = f"Spatial Transformer: {split} images (top) and their warped outputs, step {step}"
    fit = None
    if config.data.rotate:
      fit = stn_rotation_fit(config, model, variables, data)
      print(f"STN rotation vs applied rotation over {fit['n']} {split} images: "
            f"r = {fit['r']:.3f}, slope = {fit['slope']:.3f}")
      title += (f"\nrotation of the STN's warp vs the rotation applied to the digit "
                f"({fit['n']} images): r = {fit['r']:.2f}, slope {fit['slope']:.2f}")
    path = G.stn_warps(_denormalize(config, images), _denormalize(config, warped), out,
                       labels, names, title)
    return {"path": path, "step": step, "arrays": {"images": images, "warped": warped,
                                                   "theta": theta, "rotation_fit": fit}}
  # swin: stage 0's token grid and shifted-window mask, drawn over one test image
  if name != "swin":
    raise ValueError(f"--what=swin needs model.name='swin', got {name!r}.")
  from attn_jax import functional as F
  from attn_jax.vision.swin import effective_window
  p = model.patch_size
  gh, gw = -(-images.shape[1] // p), -(-images.shape[2] // p)
  m, shift = effective_window(gh, gw, model.window_size, model.window_size // 2)
  hp, wp = gh + (-gh) % m, gw + (-gw) % m
  mask = np.asarray(F.shifted_window_mask(hp, wp, m, shift))
  img = _denormalize(config, images[0])
  img = np.pad(img, ((0, hp * p - img.shape[0]), (0, wp * p - img.shape[1]), (0, 0)))
  title = (f"Swin stage 0: {gh}x{gw} tokens of {p}x{p} px, window {m}, shift {shift}: "
           f"partitions and the SW-MSA mask (white = may attend)")
  path = G.swin_windows(img, m, shift, mask, out, grid=(hp, wp), title=title)
  return {"path": path, "step": step, "arrays": {"mask": mask, "window": m, "shift": shift}}


# ----- command line ------------------------------------------------------------------------

def define_flags(flag_values=None, argv: list[str] | None = None) -> dict[str, Any]:
  """Defines the flags on `flag_values` (default absl's global FLAGS) -> name: FlagHolder.

  `argv` (default sys.argv) is where `--config.<key>=` overrides are looked for. Called
  when run as a script, so importing this module defines no global flags (it can sit next
  to experiments.train / evaluate in one process, e.g. in the tests)."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FLAGS if flag_values is None else flag_values
  return {
      "config": config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config.",
                                                flag_values=fv, lock_config=True, sys_argv=argv),
      "workdir": flags.DEFINE_string("workdir", "runs/default", "Workdir holding checkpoints/.",
                                     flag_values=fv),
      "what": flags.DEFINE_enum("what", "translation", WHATS, "Which picture.", flag_values=fv),
      "out": flags.DEFINE_string("out", None, "PNG path (default <workdir>/<what>.png).",
                                 flag_values=fv),
      "num": flags.DEFINE_integer("num", None, "Sentences / images (gates: eval batches, 0 = "
                                  f"all); default {DEFAULT_NUM}.", flag_values=fv),
      "max_tokens": flags.DEFINE_integer("max_tokens", 15, "translation: longest source "
                                         "sentence (tokens) to pick.", flag_values=fv),
      "step": flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).",
                                   flag_values=fv),
      "best": flags.DEFINE_bool("best", False, "The best checkpoint (config.best_metric).",
                                flag_values=fv),
  }


def run(holders: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
  """`visualize` with the parsed flags. Without `--config=<file>` in `argv` (default
  sys.argv) the workdir's saved config is used, plus the `--config.<key>` overrides."""
  from attn_jax.train import runconfig
  v = {k: h.value for k, h in holders.items()}
  config = runconfig.resolve(v["config"], v["workdir"], argv)
  return visualize(config, v["workdir"], v["what"], v["out"], v["num"], v["step"],
                   v["best"], v["max_tokens"])


def main(argv: list[str]) -> None:
  from absl import app, logging
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  r = run(_HOLDERS)
  print(f"wrote {r['path']} (step {r['step']})")


if __name__ == "__main__":
  from absl import app
  from attn_jax.train import cli

  def _define() -> None:
    global _HOLDERS
    _HOLDERS = define_flags()
  cli.run(main, _DEFAULT_CONFIG, _define)
