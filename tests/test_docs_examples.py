"""The README's and docs/'s code blocks: Python blocks run, shell commands are valid.

- Every ```python block of a page runs, in order, in one namespace per page (sybil; a block
  that starts with `>>>` is a doctest and its output is compared). Blocks run in a temporary
  folder that holds a link to configs/, so they may write files, with the repository root on
  sys.path (`from configs import ...`, `from experiments.train import ...`). They run with
  `jax_threefry_partitionable` off: the same code, other random bits, and model inits that
  compile several times faster on CPU (the examples check shapes, not random values).
- Every ```bash block, and every inline `python -m experiments...` span, is checked by
  `doc_commands`: the entry point exists and knows every flag and `--config.` key used.
- Every fenced block says its language: python, bash or text.
"""
from __future__ import annotations

import doctest
import glob
import os
import pathlib
import re
import time

import pytest

import doc_commands

ROOT = doc_commands.ROOT
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in
                               glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
LANGUAGES = {"python", "bash", "text"}
FENCE = re.compile(r"^([ \t]*)(```|~~~)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1\2[ \t]*$", re.M | re.S)
INLINE_COMMAND = re.compile(r"`(python -m experiments\.[^`]+)`")


def _read(page: str) -> str:
  with open(os.path.join(ROOT, page), encoding="utf-8") as f:
    return f.read()


def _fences(page: str) -> list[tuple[int, str, str]]:
  """(line, language, body) of each fenced block."""
  text = _read(page)
  return [(text.count("\n", 0, m.start()) + 1, m.group(3), m.group(4))
          for m in FENCE.finditer(text)]


def _has_python(page: str) -> bool:
  return any(lang == "python" for _, lang, _ in _fences(page))


def test_pages_exist():
  assert len(PAGES) > 10 and "docs/index.md" in PAGES


@pytest.mark.parametrize("page", PAGES)
def test_fenced_blocks_name_their_language(page):
  bad = [f"{page}:{line}: ```{lang}" for line, lang, _ in _fences(page) if lang not in LANGUAGES]
  assert not bad, f"fenced blocks must be one of {sorted(LANGUAGES)}:\n" + "\n".join(bad)


@pytest.mark.parametrize("page", [p for p in PAGES if _has_python(p)])
def test_python_blocks_run(page, tmp_path, monkeypatch):
  import jax
  from sybil import Sybil
  from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(ROOT)
  os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  sybil = Sybil(parsers=[PythonCodeBlockParser(doctest_optionflags=flags), SkipParser()],
                path=ROOT)
  document = sybil.parse(pathlib.Path(ROOT, page))
  start = time.perf_counter()
  ran = 0
  with jax.threefry_partitionable(False):
    for example in document:
      try:
        example.evaluate()
      except Exception as e:  # noqa: BLE001 - name the block that failed
        raise AssertionError(f"{page}:{example.line}: the code block failed: "
                             f"{type(e).__name__}: {e}") from e
      ran += 1
  assert ran, f"{page}: no Python block ran"
  print(f"{page}: {ran} blocks in {time.perf_counter() - start:.1f} s")


def _shell_snippets(page: str) -> list[tuple[int, str]]:
  text = _read(page)
  snippets = [(line, body) for line, lang, body in _fences(page) if lang == "bash"]
  prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
  for m in INLINE_COMMAND.finditer(prose):
    snippets.append((prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())))
  return snippets


@pytest.mark.parametrize("page", [p for p in PAGES if _shell_snippets(p)])
def test_shell_commands_are_valid(page):
  failures, checked = [], 0
  for line, snippet in _shell_snippets(page):
    try:
      checked += doc_commands.check_block(snippet)
    except doc_commands.CommandError as e:
      failures.append(f"{page}:{line}: {e}")
  assert not failures, "\n".join(failures)
  assert checked


def test_command_checker_catches_mistakes():
  check = doc_commands.check_block
  check("python -m experiments.train --config configs/mnist_vit.py --workdir runs/x "
        "--config.num_steps=20 --config.optim.learning_rate=3e-4")
  check("for c in fashion_mnist_vit cifar10_vit; do\n"
        "  python -m experiments.train --config configs/$c.py --workdir runs/$c\ndone")
  check("python -m experiments.tune_blocks --n 4096 --mode fwd --tiles 512x256")
  bad = ["python -m experiments.trian",
         "python -m experiments.train --config.optim.lerning_rate=1e-3",
         "python -m experiments.train --config.num_steps=many",
         "python -m experiments.train --wrkdir runs/x",
         "python -m experiments.evaluate --beam=four",
         "python -m experiments.tune_blocks --tiles 512",
         "python -m experiments.bench_attention --no-such-flag",
         "python -m experiments.train --config configs/nope.py",
         "python -c 'from attn_jax import pretrained; pretrained.export_nothing()'",
         "pip install -e '.[tset]'",
         "rm -rf runs"]
  for cmd in bad:
    with pytest.raises(doc_commands.CommandError):
      check(cmd)
