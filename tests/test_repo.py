"""The README's commands are the ones CI runs, and the demo works."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
  with open(os.path.join(ROOT, *parts)) as f:
    return f.read()


def test_readme_test_command_is_what_ci_runs():
  ci = _read(".ci", "run")
  cmd = re.search(r'^TEST_CMD="(.*)"$', ci, re.M).group(1)
  head = _read("README.md").split("\n## ")[0]
  assert cmd in head, "the README's first lines must show the exact test command .ci/run runs"


def test_demo_writes_heatmap(tmp_path):
  from experiments import demo_attention
  path = demo_attention.main(["--out", str(tmp_path)])
  assert os.path.getsize(path) > 10_000
