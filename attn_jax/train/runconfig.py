"""`<workdir>/config.json`: the resolved config a run was started with.

Written at the first start of `train_and_evaluate`; a resumed run whose model (or
vocabulary-defining data keys) differ raises `MismatchError` naming the keys. The entry
points (`experiments.train`, `evaluate`, `visualize`) given a `--workdir` with a saved
config and no `--config=<file>` use the saved config, plus any `--config.<key>=`
overrides on the command line.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable

import ml_collections

from attn_jax.train.errors import MismatchError

CONFIG_FILE = "config.json"
# Keys besides model.* that change the parameters' shapes (vocabularies, classes, images).
STRUCTURE_KEYS = ("data.source", "data.name", "data.path", "data.train_files", "data.tokenizer",
                  "data.min_freq", "data.vocab_size", "data.src_lang", "data.tgt_lang",
                  "data.src_column", "data.tgt_column", "data.num_classes", "data.canvas")


def path_of(workdir: str) -> str:
  """`<workdir>/config.json`."""
  return os.path.join(workdir, CONFIG_FILE)


def _tuples(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return tuple(_tuples(v) for v in x)
  return x


def flatten(config) -> dict[str, Any]:
  """dotted key -> value (lists as tuples)."""
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = _tuples(v)
  walk(config.to_dict() if hasattr(config, "to_dict") else config, "")
  return out


def load(workdir: str) -> ml_collections.ConfigDict | None:
  """The saved config on top of `base_config()` (keys added since are defaulted), or None."""
  from attn_jax.train.config import base_config
  path = path_of(workdir)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = _tuples(json.load(f))
  out = base_config()
  for key, value in saved.items():
    if key == "model" or not isinstance(value, dict) or key not in out:
      out[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    else:
      out[key].update(value)
  return out


def save(config, workdir: str) -> None:
  """Writes `config` to `<workdir>/config.json` atomically."""
  os.makedirs(workdir, exist_ok=True)
  tmp = f"{path_of(workdir)}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  os.replace(tmp, path_of(workdir))


def differing_keys(a, b) -> list[str]:
  """Keys among model.* and STRUCTURE_KEYS whose values differ between configs a and b."""
  fa, fb = flatten(a), flatten(b)
  keys = {k for k in set(fa) | set(fb) if k.startswith("model.") or k in STRUCTURE_KEYS}
  return sorted(k for k in keys if fa.get(k, "<unset>") != fb.get(k, "<unset>"))


def check(config, workdir: str, what: str = "resume") -> None:
  """Raises MismatchError naming the keys where `config` differs from the saved one."""
  saved = load(workdir)
  if saved is None:
    return
  diff = differing_keys(saved, config)
  if diff:
    fs, fc = flatten(saved), flatten(config)
    shown = ", ".join(f"{k}: saved {fs.get(k, '<unset>')!r}, now {fc.get(k, '<unset>')!r}"
                      for k in diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")
    raise MismatchError(f"cannot {what} {workdir}: the config differs from {path_of(workdir)} in "
                        f"{shown}; use a new --workdir, or drop --config to use the saved one.")


def check_or_save(config, workdir: str, has_checkpoint: bool) -> None:
  """Resuming (a checkpoint exists): `check`. Else (first start): save `config`."""
  if has_checkpoint and os.path.exists(path_of(workdir)):
    check(config, workdir)
  else:
    save(config, workdir)


def override_keys(argv: Iterable[str], flag: str = "config") -> list[str]:
  """The dotted keys of `--config.<key>=value` / `--config.<key> value` in argv."""
  keys = []
  for a in argv:
    if a.startswith(f"--{flag}."):
      keys.append(a[len(flag) + 3:].split("=", 1)[0])
  return keys


def explicit_config_file(argv: Iterable[str], flag: str = "config") -> bool:
  """Whether argv names a config file (`--config=<file>` or `--config <file>`)."""
  return any(a == f"--{flag}" or a.startswith(f"--{flag}=") for a in argv)


def resolve(flag_config, workdir: str, argv: list[str] | None = None, quiet: bool = False):
  """The config an entry point runs: the workdir's saved config (plus the command line's
  `--config.<key>` overrides, read from `flag_config`) unless `--config=<file>` is given."""
  argv = sys.argv if argv is None else argv
  saved = load(workdir)
  if saved is None or explicit_config_file(argv):
    return flag_config
  for key in override_keys(argv):
    node, src = saved, flag_config
    *parents, leaf = key.split(".")
    for p in parents:
      node, src = node[p], src[p]
    node[leaf] = src[leaf]
  if not quiet:
    print(f"using the config saved in {path_of(workdir)}", file=sys.stderr, flush=True)
  return saved
