"""Checkpoint selection by a decoded validation metric, learning curves, results rows."""
import json
import os

import numpy as np
import pytest

from attn_jax.analysis import curves as curves_lib
from experiments import results


def test_curves_wall_time_integrates_the_logged_rate(tmp_path):
  p = tmp_path / "metrics.jsonl"
  lines = [{"step": 10, "loss": 3.0, "steps_per_sec": 1.0},
           {"step": 20, "loss": 2.0, "steps_per_sec": 0.5},
           {"step": 20, "eval_loss": 2.5, "eval_accuracy": 0.4},
           {"step": 30, "loss": 1.5, "steps_per_sec": 2.0},
           {"step": 30, "eval_loss": 2.0, "eval_accuracy": 0.6}]
  p.write_text("\n".join(map(json.dumps, lines)) + "\n{torn")
  c = curves_lib.read_curves(str(p))
  np.testing.assert_array_equal(c.train_step, [10, 20, 30])
  np.testing.assert_allclose(c.train_wall_min * 60, [10, 30, 35])   # 10/1, +10/0.5, +10/2
  assert c.eval_key == "eval_accuracy"
  np.testing.assert_allclose(c.eval_wall_min * 60, [30, 35])
  np.testing.assert_allclose(c.eval_value, [0.4, 0.6])
  out = curves_lib.plot_curves(c, str(tmp_path / "png" / "run.png"), "run")
  assert os.path.getsize(out) > 5000
  assert curves_lib.read_curves(str(p), "eval_loss").eval_value.tolist() == [2.5, 2.0]
  # The right axis names the split the loop evaluated on (the test split for Fashion-MNIST).
  assert results._eval_split(str(tmp_path)) == "validation"          # no config.json
  (tmp_path / "config.json").write_text(json.dumps({"data": {"eval_split": "test"}}))
  assert results._eval_split(str(tmp_path)) == "test"
  curves_lib.plot_curves(c, str(tmp_path / "png" / "test.png"), "run", eval_split="test")


def test_translation_row_reports_widest_beam_with_greedy_and_selection(tmp_path):
  from attn_jax.train.config import base_config
  cfg = base_config()
  cfg.model.name = "transformer"
  cfg.data.source, cfg.batch_size = "multi30k", 128
  cfg.anchor.metric, cfg.anchor.value = "bleu_lower", 36.5
  d = tmp_path / "tr"
  d.mkdir()
  (d / "run.json").write_text(json.dumps({"config": json.loads(cfg.to_json_best_effort()),
                                          "num_params": 9e6, "step": 2270, "wall_s": 60.0,
                                          "hardware": "cpu", "commands": ["train"]}))
  sel = {"metric": "bleu_lower", "split": "val", "best_step": 2000, "value": 38.2}
  base = {"split": "test_2016_flickr", "step": 2000, "bleu": 36.0, "eval_perplexity": 5.2,
          "selected_by": sel}
  (d / "eval_test_2016_flickr.json").write_text(json.dumps(
      {**base, "bleu_lower": 35.9, "beam": 1, "command": "greedy"}))
  (d / "eval_test_2016_flickr_beam4.json").write_text(json.dumps(
      {**base, "bleu_lower": 37.0, "beam": 4, "command": "beam"}))
  (d / "eval_val.json").write_text(json.dumps({**base, "split": "val", "bleu_lower": 99.0}))
  r = results.row(str(d))
  assert r["value"] == pytest.approx(37.0) and r["met"] == "yes"
  assert "greedy 35.9" in r["extra"] and "best val bleu_lower (38.2)" in r["extra"]
  assert r["commands"] == ["train", "beam", "greedy"]
  assert "| cpu |" in results.table([r])


def test_language_model_row_reports_perplexity_on_its_eval_file(tmp_path):
  from configs import multi30k_lm
  cfg = multi30k_lm.get_config()
  d = tmp_path / "lm"
  d.mkdir()
  (d / "run.json").write_text(json.dumps({
      "config": json.loads(cfg.to_json_best_effort()), "num_params": 3e6, "step": 1200,
      "wall_s": 60.0, "hardware": "cpu", "commands": ["train"],
      "eval": {"eval_perplexity": 2.59, "eval_accuracy": 0.704, "eval_loss": 0.95}}))
  r = results.row(str(d))
  assert r["value"] == pytest.approx(2.59) and r["met"] == "—"
  assert r["metric"] == "perplexity / char, val.en.gz" and "70.4%" in r["extra"]
  assert r["dataset"] == "train.en.gz (char, rows of 256)"


def test_select_checkpoint_scores_every_kept_step(tmp_path):
  from attn_jax.analysis.evaluation import select_checkpoint
  from attn_jax.train.loop import train_and_evaluate
  from configs import dates_seq2seq
  c = dates_seq2seq.get_config()
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 20, 10, 10, 10
  c.keep_checkpoints, c.optim.warmup_steps = 3, 5
  c.data.num_train, c.data.num_eval, c.progress = 500, 40, "off"
  w = str(tmp_path / "w")
  train_and_evaluate(c, w)
  seen = []
  sel = select_checkpoint(c, w, "decoded_exact_match", progress=seen.append)
  assert sorted(sel["scores"]) == [10, 20] and len(seen) == 2
  assert sel["scores"][sel["best_step"]] == max(sel["scores"].values())
  saved = json.load(open(os.path.join(w, "selection_val.json")))
  assert saved["best_step"] == sel["best_step"]
  again = select_checkpoint(c, w, "decoded_exact_match", progress=seen.append)
  assert again == sel and len(seen) == 2          # reused, nothing decoded again
  with pytest.raises(KeyError, match="not reported"):
    select_checkpoint(c, w, "no_such_metric", progress=seen.append)


def test_ablation_summary_resolves_separated_variants(tmp_path):
  from experiments import ablation
  accs = {"none": [0.900, 0.901, 0.899], "se": [0.930, 0.931, 0.929], "eca": [0.900, 0.93, 0.87]}
  for v, vals in accs.items():
    for s, a in enumerate(vals):
      d = tmp_path / f"{v}_s{s}"
      d.mkdir()
      (d / "run.json").write_text(json.dumps({"step": 10, "config": {"num_steps": 10},
                                              "eval": {"eval_accuracy": a}}))
  (tmp_path / "cbam_s0").mkdir()
  (tmp_path / "cbam_s0" / "run.json").write_text(json.dumps(
      {"step": 5, "config": {"num_steps": 10}, "eval": {"eval_accuracy": 0.99}}))   # unfinished
  out = ablation.summarize(str(tmp_path), ablation.VARIANTS, [0, 1, 2])
  assert out["none"]["mean"] == pytest.approx(90.0) and out["se"]["std"] == pytest.approx(0.1)
  assert out["cbam"]["seeds"] == {}
  resolved = {(a, b): ok for a, b, ok in out["resolved"]}
  assert resolved[("none", "se")] and not resolved[("none", "eca")]
  text = ablation.table(out, ablation.VARIANTS)
  assert "| se | 93.00, 93.10, 92.90 | 93.00 | 0.10 |" in text and "none vs se: resolved" in text
