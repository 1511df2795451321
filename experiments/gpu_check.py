"""Checks of the GPU paths on a GPU: cuDNN attention against a float64 reference, and which
attention each model's compiled train step runs.

    python -m experiments.gpu_check --part kernels --out runs/gpu_kernels.json
    python -m experiments.gpu_check --part models --out runs/gpu_models.json

'kernels': per case (plain, causal, [batch] key lengths, a boolean mask, GQA, a causal
window, cross-attention with key lengths), random bf16 inputs [batch, heads, len, 64]
(the reference sees the same bf16 values):
`F.attention` with implementation='cudnn' and with the automatic choice (which must pick
'cudnn'), against the 'reference' path in float64 on the CPU. Errors are relative
(||x - ref|| / ||ref||) for the output and for dq, dk, dv of `sum(out * g)` (random g),
next to the errors of implementation='xla' in bf16. A case passes when each cuDNN error
is at most 2x the xla error + 1e-3 (both round to bf16; cuDNN must not be worse).

'models': the ViT, Swin and Transformer at their CIFAR-10 / Multi30k config sizes, in
bfloat16 (`--dtypes` for more): each train step is compiled for the default backend and the report
says whether its HLO holds cuDNN's fused attention (`__cudnn$fmha...` custom calls).

'pipeline': training batches/s of a config's input pipeline alone, which bounds the step
rate when the accelerator is faster (`experiments/gpu_checks.sh` sizes a run by it).

    python -m experiments.gpu_check --part pipeline --config configs/cifar10_resnet.py \
        --data ../shared/data/cifar10_jpg

Exit status 1 when a kernel case fails, or a bf16 model on a GPU does not run cuDNN.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import time
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax import functional as F

CASES = {   # name -> (q heads, kv heads, q_len, kv_len, attention kwargs builder)
    "plain": (4, 4, 512, 512, lambda b, n, m: {}),
    "causal": (4, 4, 512, 512, lambda b, n, m: {"is_causal": True}),
    "key_lengths": (4, 4, 512, 512, lambda b, n, m: {"valid_lens": np.array([512, 300])}),
    "bool_mask": (4, 4, 512, 512, lambda b, n, m: {"mask": _random_mask(b, n, m)}),
    "gqa_8_over_2": (8, 2, 512, 512, lambda b, n, m: {"is_causal": True}),
    "causal_window_64": (4, 4, 512, 512, lambda b, n, m: {"window": (64, 0)}),
    "cross_key_lengths": (4, 4, 256, 384, lambda b, n, m: {"valid_lens": np.array([384, 200])}),
}
BATCH, HEAD_DIM = 2, 64


def _random_mask(b: int, n: int, m: int) -> np.ndarray:
  """[b, 1, n, m] bool, 80% kept, the diagonal always kept (no empty rows)."""
  mask = np.random.default_rng(1).random((b, 1, n, m)) < 0.8
  idx = np.arange(min(n, m))
  mask[..., idx, idx] = True
  return mask


def _rel(x, ref) -> float:
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def _loss_and_grads(impl, q, k, v, g, kw):
  def loss(q, k, v):
    out = F.attention(q, k, v, implementation=impl, **kw)
    return jnp.sum(out.astype(g.dtype) * g), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


def check_kernels(impl: str = "cudnn", scale: int = 1,
                  cases: Sequence[str] | None = None) -> tuple[list[dict], bool]:
  """One row per case: errors of `impl` / auto / xla against float64; and whether all pass.

  `impl` is 'cudnn' on a GPU ('blockwise' checks the tool itself on a CPU); lengths are
  divided by `scale` (smaller problems for that check); `cases`: names of `CASES` (all).
  """
  x64 = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)   # the float64 reference on the CPU
  try:
    return _check_kernels(impl, scale, cases or list(CASES))
  finally:
    jax.config.update("jax_enable_x64", x64)


def _check_kernels(impl: str, scale: int, cases: Sequence[str]) -> tuple[list[dict], bool]:
  cpu = jax.devices("cpu")[0]
  rows, ok = [], True
  for name in cases:
    h, hk, n, m, make_kw = CASES[name]
    n, m = n // scale, m // scale
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    # Inputs rounded to bf16 first, so the errors are the kernels' own, not the rounding's.
    arrays = [np.asarray(jnp.asarray(rng.normal(size=(BATCH, hh, ll, HEAD_DIM)), jnp.bfloat16),
                         np.float64) for hh, ll in ((h, n), (hk, m), (hk, m))]
    g = rng.normal(size=(BATCH, h, n, HEAD_DIM))
    kw = make_kw(BATCH, n, m)
    ref_in = [jax.device_put(a, cpu) for a in arrays]   # float64, the reference
    ref_out, ref_grads = _loss_and_grads("reference", *ref_in, jax.device_put(g, cpu),
                                         {k: jax.device_put(x, cpu) if isinstance(x, np.ndarray)
                                          else x for k, x in kw.items()})
    dev_in = [jnp.asarray(a, jnp.bfloat16) for a in arrays]
    dev_kw = {k: jnp.asarray(x) if isinstance(x, np.ndarray) else x for k, x in kw.items()}
    chosen = F.select_implementation(*dev_in, mask=dev_kw.get("mask"), window=kw.get("window"),
                                     is_causal=kw.get("is_causal", False))
    row = {"case": name, "q": [BATCH, h, n, HEAD_DIM], "kv": [BATCH, hk, m, HEAD_DIM],
           "auto_selects": chosen}
    for name_impl in (impl, None, "xla"):
      try:
        out, grads = _loss_and_grads(name_impl, *dev_in, jnp.asarray(g, jnp.float32), dev_kw)
      except Exception as e:   # report it and go on to the next case
        row[name_impl or "auto"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        continue
      errs = [_rel(out, ref_out)] + [_rel(a, b) for a, b in zip(grads, ref_grads)]
      row[name_impl or "auto"] = dict(zip(("out", "dq", "dk", "dv"), errs))
    keys = ("out", "dq", "dk", "dv")
    passed = (chosen == impl and all("error" not in row[i] for i in (impl, "auto", "xla"))
              and all(row[i][key] <= 2 * row["xla"][key] + 1e-3
                      for i in (impl, "auto") for key in keys))
    row["pass"] = passed
    ok &= passed
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows, ok


def check_models(dtypes=(jnp.bfloat16,)) -> tuple[list[dict], bool]:
  """One row per (model, dtype): whether the compiled train step calls cuDNN attention."""
  import optax
  from configs import cifar10_swin, cifar10_vit, multi30k_transformer
  from attn_jax.train import models as models_lib
  from attn_jax.train import step as step_lib

  rng = np.random.default_rng(0)
  images = {"image": jnp.asarray(rng.normal(size=(128, 32, 32, 3)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, 128), jnp.int32)}
  toks = lambda: jnp.asarray(rng.integers(3, 8000, size=(128, 32)), jnp.int32)
  text = {"src": toks(), "tgt_in": toks(), "tgt_out": toks()}
  info = {"num_classes": 10, "src_vocab": 8000, "tgt_vocab": 8000, "image_shape": (32, 32, 3)}
  on_gpu = jax.default_backend() == "gpu"
  rows, ok = [], True
  for name, cfg, batch in (("vit", cifar10_vit.get_config(), images),
                           ("swin", cifar10_swin.get_config(), images),
                           ("transformer", multi30k_transformer.get_config(), text)):
    for dtype in dtypes:
      model, task = models_lib.build_model(cfg.model, info, dtype)
      tx = optax.adam(1e-3)
      state = jax.jit(step_lib.make_init_fn(model, task, tx, batch, 0))()
      step = step_lib.make_train_step(model, task, tx, lambda s: 1e-3, 0.0)
      row = {"model": name, "dtype": jnp.dtype(dtype).name, "backend": jax.default_backend()}
      t0 = time.perf_counter()
      try:
        compiled = jax.jit(step).lower(state, batch).compile()
        row["cudnn_calls"] = sorted(set(re.findall(r"__cudnn\$fmha\w*", compiled.as_text())))
        t1 = time.perf_counter()
        out = compiled(state, batch)
        jax.block_until_ready(out)
        row["loss"] = float(out[1]["loss"])
      except Exception as e:   # report it and go on to the next model
        row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
      else:
        row["compile_s"] = round(t1 - t0, 1)
      if on_gpu and dtype == jnp.bfloat16 and not row.get("cudnn_calls"):
        ok = False
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows, ok


def pipeline_rate(config_path: str, data_path: str, overrides: Sequence[str] = (),
                  batches: int = 150) -> tuple[list[dict], bool]:
  """Training batches/s of a config's input pipeline alone (its prefetch threads, no steps):
  what bounds the step rate when the accelerator is faster. One row."""
  from attn_jax.data import pipeline as P
  from attn_jax.data import sources
  from attn_jax.train.cli import load_config_file
  config = load_config_file(config_path)
  config.data.path = data_path
  # 'data.decode_limit_mb=0': a key of the config and a Python literal
  config.update_from_flattened_dict(
      {key: ast.literal_eval(value) for key, value in (o.split("=", 1) for o in overrides)})
  t0 = time.perf_counter()
  data = sources.build(config)
  built = time.perf_counter() - t0
  stream = P.Prefetch(data.train, depth=config.data.prefetch)
  next(stream)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(stream)
  rate = batches / (time.perf_counter() - t0)
  row = {"config": config_path, "overrides": list(overrides), "build_s": round(built, 1),
         "batches_per_s": round(rate, 1), "batch_size": config.batch_size}
  print(json.dumps(row), flush=True)
  return [row], True


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--part", choices=["kernels", "models", "pipeline"], required=True)
  p.add_argument("--out", default=None, help="JSON file for the rows")
  p.add_argument("--impl", default="cudnn", help="kernels: the implementation checked "
                 "('blockwise' with --scale 4 checks this tool on a CPU)")
  p.add_argument("--scale", type=int, default=1, help="kernels: divide the lengths by this")
  p.add_argument("--dtypes", default="bfloat16", help="models: compute dtypes, e.g. "
                 "bfloat16,float32 (cuDNN takes fp16/bf16 only)")
  p.add_argument("--config", default="configs/cifar10_resnet.py", help="pipeline: config file")
  p.add_argument("--data", default="../shared/data/cifar10_jpg", help="pipeline: data path")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="pipeline: a config override, e.g. data.decode_limit_mb=0 (repeatable)")
  args = p.parse_args(argv)
  print(f"backend {jax.default_backend()}, devices {jax.devices()}, jax {jax.__version__}",
        flush=True)
  if args.part == "kernels":
    rows, ok = check_kernels(args.impl, args.scale)
  elif args.part == "models":
    rows, ok = check_models(tuple(jnp.dtype(d) for d in args.dtypes.split(",")))
  else:
    rows, ok = pipeline_rate(args.config, args.data, args.set)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"part": args.part, "device": str(jax.devices()[0].device_kind),
                 "jax": jax.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "command": " ".join(sys.argv), "rows": rows, "pass": ok}, f, indent=1)
  print("PASS" if ok else "FAIL", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
