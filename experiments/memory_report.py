r"""Per-device memory of a config's training step on several meshes, without allocating it.

    python -m experiments.memory_report --config configs/cifar10_vit.py \
        --vit ViT-B/16,ViT-L/16 --image_size 224 --num_classes 1000 --batch_size 256 \
        --meshes 'data=8;fsdp=8;fsdp=4,model=2' --devices 8

For every model (`--vit` variants replace the config's ViT size; default: the config's own
model) and mesh, prints one row of a markdown table: parameters and optimizer state per
device (from the shardings of `attn_jax.train.sharding`), activations + temporaries and the
step's peak (from XLA's buffer assignment of the compiled train step; `--no_compile` skips
it). Everything is shapes (`jax.eval_shape`, `lower().compile()`): nothing is allocated, so
a 2-core CPU with `--devices 8` simulated devices sizes a ViT-L run for 8 accelerators.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/cifar10_vit.py", help="config file[:arg]")
  p.add_argument("--vit", default="", help="comma-separated ViT variants, e.g. ViT-B/16")
  p.add_argument("--image_size", type=int, default=0, help="default: the dataset's")
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--batch_size", type=int, default=0, help="global; default config.batch_size")
  p.add_argument("--meshes", default="data=-1;fsdp=-1", help="';'-separated mesh specs "
                 "(axis=size,...; -1 = all devices)")
  p.add_argument("--devices", type=int, default=0,
                 help="simulate this many CPU devices (only before JAX starts; 0 = as found)")
  p.add_argument("--no_compile", action="store_true", help="skip the compiled-step columns")
  p.add_argument("--fsdp_min_size", type=int, default=-1,
                 help="fsdp shards parameters of at least this many elements; -1: the config's")
  p.add_argument("--unit", choices=("B", "KiB", "MiB", "GiB"), default="MiB")
  p.add_argument("--scan", choices=("config", "on", "off"), default="on",
                 help="scan the ViT blocks (compiles faster)")
  p.add_argument("--remat", default="config",
                 help="comma-separated ViT remat policies (none, full, dots): a row each")
  return p.parse_args(argv)


def _mesh_spec(text: str, n: int) -> str:
  """'fsdp=-1' -> 'fsdp=<n>' (the one axis given -1 takes every device)."""
  parts = []
  for part in filter(None, text.split(",")):
    k, _, v = part.partition("=")
    parts.append(f"{k}={n}" if v.strip() == "-1" and k.strip() != "data" else part)
  return ",".join(parts)


def models(config, args) -> list[tuple[str, object]]:
  """[(label, config.model)] for the config's model or each `--vit` variant."""
  import copy
  from attn_jax.vision.vit import VIT_SIZES
  if not args.vit:
    return [(config.model.name, config.model)]
  out = []
  for name in args.vit.split(","):
    size, _, patch = name.strip().removeprefix("ViT-").partition("/")
    if size not in VIT_SIZES or not patch.isdigit():
      raise SystemExit(f"error: --vit {name!r}: expected e.g. ViT-B/16 ({sorted(VIT_SIZES)})")
    m = copy.deepcopy(config.model)
    m.name = "vit"
    m.width, m.depth, m.num_heads, m.mlp_dim = VIT_SIZES[size]
    m.patch_size = int(patch)
    if args.scan != "config":
      m.scan_layers = args.scan == "on"
    for remat in args.remat.split(","):
      variant = copy.deepcopy(m)
      label = f"ViT-{size}/{patch}"
      if remat.strip() != "config":
        variant.remat = remat.strip()
        label += f" remat={remat.strip()}" if remat.strip() != "none" else ""
      out.append((label, variant))
  return out


def main(argv: list[str] | None = None) -> str:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.devices and "jax" not in sys.modules:
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attn_jax.train import cli, config as config_lib, memory, models as models_lib, optim
  config = cli.load_config_file(args.config)
  size = args.image_size or config_lib._known_image_size(config) or {
      "cifar10": 32, "mnist": 28, "fashion_mnist": 28}.get(config.data.name)
  if not size:
    raise SystemExit("error: --image_size is needed (the config's dataset size is unknown)")
  batch_size = args.batch_size or config.batch_size
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  n = jax.device_count()
  batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, args.channels), np.float32),
           "label": jax.ShapeDtypeStruct((batch_size,), np.int32)}
  tx, _ = optim.make_optimizer(config.optim, config.num_steps)
  min_size = (args.fsdp_min_size if args.fsdp_min_size >= 0
              else config.get("mesh", {}).get("fsdp_min_size", 2 ** 14))
  rows = []
  for label, model_cfg in models(config, args):
    model, task = models_lib.build_model(model_cfg, {"num_classes": args.num_classes}, dtype)
    for mesh in args.meshes.split(";"):
      t0 = time.time()
      spec = _mesh_spec(mesh.strip(), n) + f",fsdp_min_size={min_size}"
      row = memory.estimate(model, task, tx, batch, spec, label=label,
                            compile_step=not args.no_compile, seed=config.seed)
      rows.append(row)
      print(f"  {label} on {row.mesh}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
  head = (f"{config.optim.name} optimizer, {config.dtype}, global batch {batch_size} of "
          f"{size}x{size}x{args.channels}, {args.num_classes} classes, {n} "
          f"{jax.devices()[0].platform} devices; {args.unit} per device")
  text = head + "\n\n" + memory.table(rows, args.unit)
  print(text, flush=True)
  return text


if __name__ == "__main__":
  main()
