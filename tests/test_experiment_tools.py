"""The pieces behind the real-data experiments: the rotated/translated digits, detokenized
BLEU input, the run record that sums wall time over resumptions, and the results table."""
from __future__ import annotations

import glob
import json
import os
import sys
import time
import types

import ml_collections
import numpy as np
import pytest

from attn_jax.data import pipeline as P
from attn_jax.data.text import detokenize
from attn_jax.train import metrics as metrics_lib
from attn_jax.train.config import base_config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import results  # noqa: E402


class _Fixed:
  """A stand-in generator that always draws the given angle and shift."""

  def __init__(self, angle: float, shift=(0, 0)):
    self.angle, self.shift = angle, np.asarray(shift)

  def uniform(self, lo, hi):
    assert lo <= self.angle <= hi
    return self.angle

  def integers(self, lo, hi, size):
    return self.shift


def test_random_affine_rotates_shifts_and_pads():
  img = np.random.default_rng(0).integers(0, 255, (7, 7, 1)).astype(np.uint8)
  assert np.array_equal(P.random_affine(img, _Fixed(90.0), rotate=90), np.rot90(img, 1))
  assert np.array_equal(P.random_affine(img, _Fixed(0.0), rotate=10), img)
  shifted = P.random_affine(img, _Fixed(0.0, (1, 2)), translate=2)
  assert np.array_equal(shifted[1:, 2:], img[:-1, :-2]) and not shifted[0].any()
  canvas = P.random_affine(img, _Fixed(0.0), canvas=11, rotate=5)
  assert canvas.shape == (11, 11, 1) and np.array_equal(canvas[2:9, 2:9], img)


def test_warped_eval_set_is_fixed_and_train_draws_fresh_warps():
  rng = np.random.default_rng(1)
  ex = {"image": rng.integers(0, 255, (12, 12, 1)).astype(np.uint8), "label": 3}
  ev = P.image_preprocess([0.5], [0.5], rotate=45, translate=2, canvas=16, train=False)
  a, b = ev(ex), ev(dict(ex))
  assert a["image"].shape == (16, 16, 1) and np.array_equal(a["image"], b["image"])
  tr = P.image_preprocess([0.5], [0.5], rotate=45, translate=2, canvas=16)
  draws = [tr(ex, np.random.default_rng(s))["image"] for s in range(3)]
  assert not np.array_equal(draws[0], draws[1]) or not np.array_equal(draws[1], draws[2])


@pytest.mark.parametrize("tokens,text", [
    ("a man in a blue shirt , sits .", "A man in a blue shirt, sits."),
    ("the dog ' s toy !", "The dog's toy!"),
    ("", ""),
])
def test_detokenize(tokens, text):
  assert detokenize(tokens) == text


def test_truecasing_learned_from_training_text():
  """German nouns get their capitals back; sentence-initial capitals do not count."""
  from attn_jax.data.text import WordTokenizer
  tok = WordTokenizer.fit(["Ein Hund läuft .", "Der Hund bellt .", "Ein Mann und ein Hund .",
                           "Zwei Männer sehen den Hund ."], min_freq=1)
  assert tok.case["hund"] == "Hund" and tok.case["mann"] == "Mann" and "ein" not in tok.case
  assert tok.decode(tok.encode("Ein Mann und ein Hund .")) == "ein mann und ein hund ."
  assert detokenize("ein mann und ein hund .", tok.case) == "Ein Mann und ein Hund."


def test_run_record_sums_wall_time_over_resumptions(tmp_path, monkeypatch):
  cfg = base_config()
  monkeypatch.setattr(sys, "argv", ["x.py", "--a"])
  r = metrics_lib.RunRecord(str(tmp_path), cfg, 123)
  r.t0 -= 10.0                                   # pretend 10 s of training
  r.update(5, {"eval_accuracy": 0.5}, "eval_accuracy")
  monkeypatch.setattr(sys, "argv", ["x.py", "--b"])
  r2 = metrics_lib.RunRecord(str(tmp_path), cfg, 123)
  r2.t0 -= 5.0
  r2.update(9, {"eval_accuracy": 0.4}, "eval_accuracy")
  rec = json.load(open(tmp_path / "run.json"))
  assert rec["step"] == 9 and 15.0 <= rec["wall_s"] < 20.0
  assert rec["eval"]["eval_accuracy"] == pytest.approx(0.4)
  assert rec["best"]["eval_accuracy"] == pytest.approx(0.5) and rec["best"]["step"] == 5
  assert [c.split()[-1] for c in rec["commands"]] == ["--a", "--b"]


def test_recorded_command_starts_with_the_environment_that_changes_the_run(monkeypatch,
                                                                           tmp_path):
  """`python -m` runs are named by module whatever the working directory; MALLOC_* and
  XLA_FLAGS (speed, devices) come first; arguments are shell-quoted."""
  for k in metrics_lib.RECORDED_ENV:
    monkeypatch.delenv(k, raising=False)
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments", "train.py")
  spec = types.SimpleNamespace(name="experiments.train", origin=script)
  monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=spec))
  monkeypatch.setattr(sys, "argv", [script, "--config", "c.py", "--config.model.depth=(2, 2)"])
  monkeypatch.chdir(tmp_path)
  assert metrics_lib.command_line() == (
      "python -m experiments.train --config c.py '--config.model.depth=(2, 2)'")
  monkeypatch.setenv("MALLOC_ARENA_MAX", "1")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --x=1")
  assert metrics_lib.command_line().startswith(
      "XLA_FLAGS='--xla_force_host_platform_device_count=8 --x=1' MALLOC_ARENA_MAX=1 "
      "python -m experiments.train --config c.py")
  monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=None))
  monkeypatch.setattr(sys, "argv", ["tools/run.py", "--a"])   # a script, not -m
  assert metrics_lib.command_line().endswith("MALLOC_ARENA_MAX=1 python tools/run.py --a")


def _fake_run(root, name, cfg, step, eval_metrics, test=None):
  d = root / name
  d.mkdir(parents=True)
  rec = {"commands": [f"python -m experiments.train --workdir runs/{name}"],
         "config": json.loads(cfg.to_json_best_effort()), "num_params": 2_500_000,
         "hardware": "1 x cpu (test)", "step": step, "wall_s": 600.0, "eval": eval_metrics}
  (d / "run.json").write_text(json.dumps(rec))
  if test is not None:
    (d / "eval_test_2016_flickr.json").write_text(json.dumps(test))
  return str(d)


def test_results_table_rows_and_anchors(tmp_path):
  vit = base_config()
  vit.model = ml_collections.ConfigDict({"name": "vit", "depth": 6, "width": 96, "patch_size": 4})
  vit.data.name, vit.num_steps = "fashion_mnist", 4700
  vit.anchor.metric, vit.anchor.value, vit.anchor.source = "accuracy", 92.3, "small ViT"
  tr = base_config()
  tr.model = ml_collections.ConfigDict({"name": "transformer", "depth": 3, "width": 256})
  tr.data.source, tr.num_steps, tr.batch_size = "multi30k", 1150, 128
  tr.anchor.metric, tr.anchor.value, tr.anchor.source = "bleu_lower", 36.5, "Transformer"
  rows = [results.row(_fake_run(tmp_path, "vit", vit, 4700, {"eval_accuracy": 0.93})),
          results.row(_fake_run(tmp_path, "tr", tr, 1150, {},
                                {"split": "test_2016_flickr", "bleu": 30.1, "bleu_lower": 31.0,
                                 "eval_perplexity": 7.5, "beam": 4, "command": "python -m eval"}))]
  assert rows[0]["value"] == pytest.approx(93.0) and rows[0]["met"] == "yes"
  assert rows[0]["epochs"] == pytest.approx(4700 * 64 / 60_000)
  assert rows[1]["value"] == pytest.approx(31.0) and rows[1]["met"] == "no"
  assert "ppl 7.5" in rows[1]["extra"] and "python -m eval" in rows[1]["commands"]
  md = results.table(rows)
  assert md.count("\n| ") == 2 and "| 93.00 | 92.3 | yes |" in md and "1 x cpu (test)" in md
  assert results.row(str(tmp_path / "missing")) is None


def test_a_test_images_warp_angle_can_be_recomputed():
  """experiments.visualize's STN analysis redraws each test image's angle this way."""
  img = np.random.default_rng(2).integers(0, 255, (9, 9, 1)).astype(np.uint8)
  ev = P.image_preprocess([0.0], [1 / 255], rotate=45, train=False)   # identity normalization
  angle, _ = P.draw_affine(P.eval_warp_rng(img), 45)
  assert -45 <= angle <= 45 and angle != 0
  expected = P.random_affine(img, _Fixed(angle), rotate=45).astype(np.float32)
  np.testing.assert_allclose(ev({"image": img, "label": 0})["image"], expected, atol=1e-3)


def test_results_archive_keeps_records_not_checkpoints(tmp_path):
  cfg = base_config()
  cfg.model = ml_collections.ConfigDict({"name": "transformer", "depth": 3, "width": 256})
  cfg.data.source, cfg.num_steps = "multi30k", 100
  cfg.anchor.metric, cfg.anchor.value = "bleu_lower", 36.5
  run = _fake_run(tmp_path / "runs", "tr", cfg, 100, {},
                  {"split": "test_2016_flickr", "bleu": 30.1, "bleu_lower": 31.0, "step": 100,
                   "eval_perplexity": 7.5, "beam": 1, "command": "python -m eval"})
  (tmp_path / "runs" / "tr" / "eval_test_2016_flickr_beam4.json").write_text(json.dumps(
      {"split": "test_2016_flickr", "bleu": 32.0, "bleu_lower": 33.0, "step": 100,
       "eval_perplexity": 7.5, "beam": 4, "command": "python -m eval --beam=4"}))
  (tmp_path / "runs" / "tr" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
  (tmp_path / "runs" / "tr" / "checkpoints" / "100").mkdir(parents=True)
  dest = results.archive(run, str(tmp_path / "records"))
  assert sorted(os.listdir(dest)) == ["eval_test_2016_flickr.json",
                                      "eval_test_2016_flickr_beam4.json", "metrics.jsonl",
                                      "run.json"]
  archived, original = results.row(dest), results.row(run)
  # the record had no `updated`: archive dates it by run.json's modification time (now)
  assert archived.pop("date") == time.strftime("%Y-%m-%d", time.gmtime())
  assert original.pop("date") is None and archived == original
  assert results.row(dest)["value"] == pytest.approx(33.0)   # widest beam, not file order
  with pytest.raises(FileNotFoundError, match="no run.json"):
    results.archive(str(tmp_path / "missing"), str(tmp_path / "records"))


def test_committed_results_tables_are_rebuilt_from_committed_records():
  """docs/results.md and docs/ablation.md are what the scripts print for results/."""
  from experiments import ablation
  root = os.path.join(os.path.dirname(__file__), "..")
  runs = sorted(glob.glob(os.path.join(root, "results", "*", "run.json")))
  if not runs:
    pytest.skip("no archived run records in results/")
  rows = [results.row(os.path.dirname(r)) for r in runs]
  with open(os.path.join(root, "docs", "results.md")) as f:
    assert f.read() == results.table(rows)
  abl = os.path.join(root, "results", "ablation")
  if os.path.isdir(abl):
    summary = ablation.summarize(abl, ablation.VARIANTS, (0, 1, 2))
    with open(os.path.join(root, "docs", "ablation.md")) as f:
      assert f.read() == ablation.table(summary, ablation.VARIANTS)


def test_gpu_check_kernels_compares_against_float64_and_flags_a_wrong_choice():
  """The GPU check's machinery on a CPU: at these lengths the automatic choice is
  'reference', so checking 'reference' passes and checking 'blockwise' fails on the choice."""
  import jax
  from experiments import gpu_check
  cases = ("key_lengths", "bool_mask", "gqa_8_over_2")
  rows, ok = gpu_check.check_kernels("reference", scale=8, cases=cases)
  assert ok and [row["case"] for row in rows] == list(cases)
  for row in rows:
    assert row["auto_selects"] == "reference" and row["pass"]
    assert all(0 < row["reference"][k] < 0.02 for k in ("out", "dq", "dk", "dv"))  # bf16 rounding
  rows, ok = gpu_check.check_kernels("blockwise", scale=8, cases=cases[:1])
  assert not ok and not rows[0]["pass"]
  assert not jax.config.jax_enable_x64   # the float64 reference leaves the setting as it was
