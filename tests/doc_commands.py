"""Checks the shell commands of the README and docs/ without running them.

Every `python -m experiments.X ...` must name an existing entry point, and every flag must
be one it defines:

- argparse entry points: their own parser runs on the arguments (unknown flags and values
  its `type=` converters reject fail), then the entry point is stopped before it does
  anything;
- absl entry points (`train`, `evaluate`, `sample`, `visualize`, `results`): the flag names
  (and int / float values) are checked against the module's `DEFINE_*` calls, read from the
  source; the `--config` file is loaded and each `--config.<key>=<value>` must be a key of
  it with a value of the key's type (what `attn_jax.train.cli` checks before a run).

Simple `for V in a b c; do ... done` loops are expanded, `$V` / `${V}` substituted.
`python -c` code is compiled and its imports and module attributes resolved. Any other
command must be in `OTHER_COMMANDS`.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import io
import itertools
import os
import re
import shlex
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Commands a reader may meet besides `python`; checked as noted in `_check_simple`.
OTHER_COMMANDS = {"pip", ".", "source", "bash", "mkdocs", "tensorboard", "cd", "export",
                  "mkdir", "ls", "cat", "taskset"}
SEPARATORS = {";", "&&", "||", "|", "&", "\n"}
ABSL_BUILTIN = {"help", "helpfull", "helpshort", "helpxml", "verbosity", "v", "logtostderr",
                "alsologtostderr", "log_dir", "stderrthreshold", "showprefixforinfo",
                "flagfile", "undefok", "only_check_args", "pdb", "pdb_post_mortem",
                "run_with_pdb", "run_with_profiling", "use_cprofile_for_profiling",
                "debug", "nodebug"}   # --debug: attn_jax.train.cli


class CommandError(AssertionError):
  pass


# ----- splitting a shell block into simple commands -------------------------------------

def _logical_lines(text: str) -> list[str]:
  return text.replace("\\\n", " ").split("\n")


def _tokens(line: str) -> list[str]:
  lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
  lex.whitespace_split = True
  lex.commenters = "#"
  return list(lex)


def simple_commands(text: str) -> list[list[str]]:
  """The simple commands of a shell snippet (loops expanded), as token lists."""
  loops: list[tuple[str, list[str]]] = []
  bodies: list[tuple[list[tuple[str, list[str]]], list[str]]] = []
  for line in _logical_lines(text):
    cmd: list[str] = []
    for tok in _tokens(line) + ["\n"]:
      if tok not in SEPARATORS:
        cmd.append(tok)
        continue
      while cmd and cmd[0] in ("do", "then", "else"):
        cmd = cmd[1:]
      if cmd[:1] == ["for"]:
        if len(cmd) < 4 or cmd[2] != "in":
          raise CommandError(f"unsupported loop: {' '.join(cmd)}")
        loops.append((cmd[1], cmd[3:]))
      elif cmd[:1] == ["done"]:
        if not loops:
          raise CommandError("'done' without a loop")
        loops.pop()
      elif cmd:
        bodies.append((list(loops), cmd))
      cmd = []
  if loops:
    raise CommandError(f"unclosed loop over {loops[-1][0]}")
  out = []
  for env, cmd in bodies:
    names = [n for n, _ in env]
    for values in itertools.product(*(v for _, v in env)):
      sub = dict(zip(names, values))
      out.append([re.sub(r"\$\{?(\w+)\}?", lambda m: sub.get(m.group(1), m.group(0)), t)
                  for t in cmd])
  return out


# ----- checking ---------------------------------------------------------------------------

def check_block(text: str) -> int:
  """Checks every command of a shell snippet; returns how many were checked."""
  cmds = simple_commands(text)
  for cmd in cmds:
    try:
      _check_simple(cmd)
    except CommandError as e:
      raise CommandError(f"{' '.join(cmd)}\n  -> {e}") from None
  return len(cmds)


def _check_simple(cmd: list[str]) -> None:
  while cmd and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]):   # VAR=value prefixes
    cmd = cmd[1:]
  if cmd[:1] == ["taskset"]:
    cmd = cmd[3:] if cmd[1:2] == ["-c"] else cmd[2:]
  for i, t in enumerate(cmd):   # drop redirections
    if t in (">", ">>", "<"):
      cmd = cmd[:i]
      break
  if not cmd:
    return
  name, args = cmd[0], cmd[1:]
  if name in ("python", "python3"):
    if args[:1] == ["-m"]:
      return check_module(args[1], args[2:])
    if args[:1] == ["-c"]:
      return check_python_c(args[1])
    if args[:1] == ["..."]:   # a placeholder for any python command
      return
    raise CommandError("python without -m or -c")
  if name not in OTHER_COMMANDS:
    raise CommandError(f"unknown command {name!r} (add it to OTHER_COMMANDS if it is meant)")
  if name == "pip":
    _check_pip(args)
  elif name == "bash":
    if not os.path.isfile(os.path.join(ROOT, args[0])):
      raise CommandError(f"no file {args[0]}")
  elif name == "mkdocs":
    if args[:1] not in (["serve"], ["build"]):
      raise CommandError("mkdocs serve | build")
    if not os.path.isfile(os.path.join(ROOT, "mkdocs.yml")):
      raise CommandError("no mkdocs.yml")


def _check_pip(args: list[str]) -> None:
  if args[:1] != ["install"]:
    raise CommandError("pip install ...")
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  for a in args[1:]:
    m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", a)
    if m and m.group(1):
      unknown = set(m.group(1).split(",")) - set(extras)
      if unknown:
        raise CommandError(f"unknown extras {sorted(unknown)}; pyproject has {sorted(extras)}")


def check_python_c(code: str) -> None:
  try:
    tree = ast.parse(code)
  except SyntaxError as e:
    raise CommandError(f"python -c: {e}") from None
  modules = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        modules[a.asname or a.name.split(".")[0]] = importlib.import_module(a.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom):
      base = importlib.import_module(node.module)
      for a in node.names:
        obj = getattr(base, a.name, None)
        if obj is None:
          try:
            obj = importlib.import_module(f"{node.module}.{a.name}")
          except ImportError:
            raise CommandError(f"python -c: cannot import {a.name} from {node.module}") from None
        modules[a.asname or a.name] = obj
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in modules and not hasattr(modules[node.value.id], node.attr)):
      raise CommandError(f"python -c: {node.value.id}.{node.attr} does not exist")


def check_module(module: str, args: list[str]) -> None:
  if not module.startswith("experiments."):
    if importlib.util.find_spec(module) is None:
      raise CommandError(f"no module {module}")
    return
  path = os.path.join(ROOT, *module.split(".")) + ".py"
  if not os.path.isfile(path):
    raise CommandError(f"no entry point {os.path.relpath(path, ROOT)}")
  with open(path) as f:
    source = f.read()
  if "argparse.ArgumentParser" in source:
    return _check_argparse(module, args)
  if "DEFINE_" in source:
    return _check_absl(path, source, args)
  raise CommandError(f"{module}: neither argparse nor absl flags found")


class _Parsed(Exception):
  pass


def _check_argparse(module: str, args: list[str]) -> None:
  """Runs the entry point's `main(args)` until its parser has parsed them."""
  mod = importlib.import_module(module)
  original = argparse.ArgumentParser.parse_args

  def parse_then_stop(self, a=None, namespace=None):
    raise _Parsed(original(self, a, namespace))

  err = io.StringIO()
  argparse.ArgumentParser.parse_args = parse_then_stop
  try:
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
      mod.main(list(args))
  except _Parsed:
    return
  except SystemExit as e:
    if e.code in (0, None):
      return
    raise CommandError(f"{module}: " + err.getvalue().strip().splitlines()[-1]) from None
  finally:
    argparse.ArgumentParser.parse_args = original
  raise CommandError(f"{module}.main() returned without parsing its arguments")


@functools.lru_cache(maxsize=None)
def _absl_flags(path: str, source: str) -> tuple[dict[str, str], str | None]:
  """({flag name: DEFINE kind}, default config file) from the module's source."""
  tree = ast.parse(source)
  flags, default = {}, None
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith("DEFINE_") and node.args
        and isinstance(node.args[0], ast.Constant)):
      flags[node.args[0].value] = node.func.attr[len("DEFINE_"):]
    if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_DEFAULT_CONFIG"
                                             for t in node.targets)):
      parts = [n.value for n in ast.walk(node.value)
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
      default = os.path.join(*parts)
  return flags, default


def _check_absl(path: str, source: str, args: list[str]) -> None:
  from attn_jax.train import cli
  flags, default = _absl_flags(path, source)
  positional_ok = "Unexpected arguments" not in source   # main() rejects positional args
  i = 0
  while i < len(args):
    a = args[i]
    i += 1
    if not a.startswith("-"):
      if not positional_ok:
        raise CommandError(f"unexpected positional argument {a!r}")
      continue
    name, eq, value = a.lstrip("-").partition("=")
    if name.startswith("config.") and "config" in flags:
      i += 0 if eq else 1   # `--config.<key> value`
      continue              # checked below against the config file
    kind = flags.get(name)
    if kind is None and name.startswith("no") and flags.get(name[2:]) in ("bool", "boolean"):
      continue
    if kind is None:
      if name in ABSL_BUILTIN:
        continue
      raise CommandError(f"unknown flag --{name} (defined: {sorted(flags)})")
    if kind in ("bool", "boolean"):
      if eq and value.lower() not in ("true", "false", "1", "0"):
        raise CommandError(f"--{name}={value}: not a bool")
      continue
    if not eq:
      if i >= len(args):
        raise CommandError(f"--{name} needs a value")
      value, i = args[i], i + 1
    if "$" in value:
      continue
    try:
      {"integer": int, "float": float}.get(kind, str)(value)
    except ValueError:
      raise CommandError(f"--{name}={value}: not a valid {kind}") from None
  if "config" not in flags:
    return
  spec = cli.config_arg(args, default)
  if "$" in spec:
    raise CommandError(f"--config={spec}: cannot check a config name built by the shell")
  file, colon, arg = spec.partition(":")
  spec = os.path.join(ROOT, file) + colon + arg
  try:
    config = cli.load_config_file(spec)
    cli.check_overrides(config, args, spec)
  except Exception as e:  # noqa: BLE001 - ConfigError, with the key or file
    raise CommandError(str(e)) from None
  _check_override_values(config, args)


def _check_override_values(config, args: list[str]) -> None:
  for a in args:
    m = re.fullmatch(r"--config\.([\w.]+)=(.*)", a)
    if not m or "$" in m.group(2):
      continue
    node = config
    for part in m.group(1).split("."):
      node = node[part]
    value = m.group(2)
    ok = True
    if isinstance(node, bool):
      ok = value.lower() in ("true", "false", "1", "0")
    elif isinstance(node, int):
      ok = re.fullmatch(r"-?\d+", value) is not None
    elif isinstance(node, float):
      try:
        float(value)
      except ValueError:
        ok = False
    if not ok:
      raise CommandError(f"--config.{m.group(1)}={value}: the key holds a "
                         f"{type(node).__name__}")
