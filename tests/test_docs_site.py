"""The documentation site builds with `mkdocs build --strict`, and the README's links resolve.

`--strict` (with `validation:` in mkdocs.yml) fails on a broken link or anchor, a page left
out of the nav, a missing snippet, and a docstring the API reference cannot render. The code
blocks of the pages are run and checked by tests/test_docs_examples.py.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _read(path: str) -> str:
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def test_mkdocs_build_strict(tmp_path):
  site = tmp_path / "site"
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                         "-f", os.path.join(ROOT, "mkdocs.yml"), "-d", str(site)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
  for page in ("index.html", "functional/index.html", "experiments/index.html",
               "api/functional/index.html", "api/train/index.html"):
    assert (site / page).is_file(), page
  api = (site / "api" / "functional" / "index.html").read_text()
  assert 'id="attn_jax.functional.core.attention"' in api        # generated from docstrings
  home = (site / "index.html").read_text()
  assert "Pure functions in your own JAX code" in home            # the README's examples
  experiments = (site / "experiments" / "index.html").read_text()
  assert "m30k_tr_de_en" in experiments                           # docs/results.md included


def _anchors(markdown: str) -> set[str]:
  from markdown.extensions.toc import slugify
  return {slugify(m.group(1).strip(), "-")
          for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", markdown, re.M)}


def test_readme_links_resolve():
  readme = _read("README.md")
  code_free = re.sub(r"```.*?```", "", readme, flags=re.S)
  broken = []
  for target in LINK.findall(code_free):
    if re.match(r"[a-z]+://", target):
      continue
    path, _, anchor = target.partition("#")
    if path and not os.path.exists(os.path.join(ROOT, path)):
      broken.append(target)
    elif anchor and path.endswith(".md") and anchor not in _anchors(_read(path)):
      broken.append(target)
  assert not broken, f"README links that do not resolve: {broken}"


def test_readme_is_a_front_page():
  lines = _read("README.md").splitlines()
  assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


# Documented names that are not parameters, in docstrings maintained elsewhere; an entry
# that no longer occurs is fine.
KNOWN_DOC_PARAMS: set[tuple[str, str]] = set()


def test_documented_arguments_exist():
  """Every `Args:` entry names a parameter of its function (griffe's unknown-parameter check,
  which the site build leaves off for the docstrings listed in KNOWN_DOC_PARAMS)."""
  import griffe
  package = griffe.load("attn_jax", search_paths=[ROOT], docstring_parser="google",
                        resolve_aliases=False)

  def walk(obj):
    for member in obj.members.values():
      if member.is_alias:
        continue
      yield member
      if member.is_module or member.is_class:
        yield from walk(member)

  unknown = []
  for obj in walk(package):
    if not obj.is_function or obj.docstring is None:
      continue
    params = {p.name for p in obj.parameters}
    for section in obj.docstring.parse("google", warnings=False):
      if section.kind.value != "parameters":
        continue
      for p in section.value:
        name = p.name.lstrip("*")
        if name not in params and (obj.path, p.name) not in KNOWN_DOC_PARAMS:
          unknown.append(f"{obj.relative_filepath}:{obj.lineno} {obj.path}: {p.name!r}")
  assert not unknown, "documented arguments that are not parameters:\n" + "\n".join(unknown)
