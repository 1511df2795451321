"""Command-line conventions of the entry points (`experiments.train`, `evaluate`, `visualize`).

`run(main, argv)` wraps `absl.app.run`:
- before flags are parsed, the `--config` file must exist and every `--config.<key>=`
  override must name a key of it (else one line with a did-you-mean);
- `--help` also lists the config's keys with their defaults and meanings;
- the project's errors (ConfigError, DataError, ShapeError, CheckpointError, SaveError,
  LockError, NonFiniteError, MismatchError, a missing file) print as one line
  `error: ...` and exit with status 2; Ctrl-C exits with 130;
- `--debug` (or `ATTN_JAX_DEBUG=1`) shows the traceback instead.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Callable

DEBUG_ENV = "ATTN_JAX_DEBUG"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def user_errors() -> tuple[type[BaseException], ...]:
  """The exceptions shown as one line: bad input, not a bug."""
  from attn_jax.data.images import DataError
  from attn_jax.functional import ShapeError
  from attn_jax.train.config import ConfigError
  from attn_jax.train.errors import RunError
  return (ConfigError, DataError, ShapeError, RunError, FileNotFoundError)


def config_arg(argv: list[str], default: str) -> str:
  """The value of `--config=<file>[:arg]` (or `--config <file>`) in argv, else `default`."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return default


def load_config_file(spec: str):
  """`path.py[:arg]` -> its `get_config([arg])`, as ml_collections' config flag does."""
  from attn_jax.train.config import ConfigError
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec}: file {path} not found.")
  module_spec = importlib.util.spec_from_file_location("_attn_jax_config_check", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # noqa: BLE001 - whatever the file does wrong, name the file
    raise ConfigError(f"--config={spec}: {type(e).__name__}: {e}") from e


def check_overrides(config, argv: list[str], spec: str) -> None:
  """Raises ConfigError for the first `--config.<key>` of argv that `config` lacks."""
  import ml_collections

  from attn_jax.train.config import ConfigError, did_you_mean
  from attn_jax.train.runconfig import override_keys
  for key in override_keys(argv):
    node, seen = config, []
    for part in key.split("."):
      if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
        known = list(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
        where = f"config.{'.'.join(seen)}" if seen else "the config"
        raise ConfigError(f"--config.{key}: unknown key '{part}' in {where} of {spec}"
                          f"{did_you_mean(part, known)}.")
      node = node[part]
      seen.append(part)


def print_help(main_module, config, spec: str) -> None:
  """The entry point's docstring and flags, then every config key with default and meaning."""
  from absl import flags

  from attn_jax.train.config import keys_help
  print((main_module.__doc__ or "").strip() + "\n")
  print("Flags:")
  help_text = flags.FLAGS.module_help(main_module)
  print(help_text.split("\n", 1)[1] if "\n" in help_text else help_text)
  print(f"  --debug: show tracebacks of errors (or set {DEBUG_ENV}=1)\n")
  print(f"Config keys of {spec} (override with --config.<key>=<value>):")
  print(keys_help(config))


def run(main: Callable[[list[str]], None], default_config: str,
        define_flags: Callable[[], None], argv: list[str] | None = None) -> None:
  """`absl.app.run(main)` with the conventions of the module docstring; `define_flags()`
  defines the entry point's flags once argv has passed the checks (ml_collections parses
  the `--config.<key>` overrides as the config flag is defined)."""
  from absl import app

  from attn_jax.train.errors import SaveError
  argv = list(sys.argv if argv is None else argv)
  debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
  argv = [a for a in argv if a not in ("--debug", "--nodebug")]
  sys.argv[:] = argv
  if not debug:   # orbax logs each failure it raises (reported here in one line) at ERROR
    logging.getLogger("absl").addFilter(lambda r: "orbax" not in r.pathname)
  try:
    spec = config_arg(argv[1:], default_config)
    config = load_config_file(spec)
    check_overrides(config, argv[1:], spec)
    define_flags()
    if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
      print_help(sys.modules["__main__"], config, spec)
      sys.exit(0)
    app.run(main, argv=argv)
  except KeyboardInterrupt:
    if debug:
      raise
    print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)
  except user_errors() as e:
    if debug:
      raise
    print(f"error: {one_line(e)}\n(rerun with --debug for the traceback)", file=sys.stderr,
          flush=True)
    if isinstance(e, SaveError):   # orbax's save threads would wait minutes for each other
      sys.stdout.flush()
      os._exit(EXIT_ERROR)
    sys.exit(EXIT_ERROR)


def one_line(e: BaseException) -> str:
  """The message of `e` on one line (whitespace collapsed, at most 600 characters)."""
  text = " ".join(str(e).split())
  if isinstance(e, FileNotFoundError) and e.filename:
    text = f"{e.filename}: {e.strerror or 'not found'}"
  return text if len(text) < 600 else text[:597] + "..."
