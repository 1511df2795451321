"""experiments/bench_train.py end to end at tiny sizes: ours, the plain Flax peer, one step
each (after the warm-up), and the JSON record it writes."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bench_train  # noqa: E402


def test_bench_train_tiny_vit_writes_positive_throughputs(tmp_path):
  out = tmp_path / "bench_train.json"
  record = bench_train.main(["--tiny", "--configs", "vit_s4", "--steps", "1", "--rounds", "1",
                             "--no-real", "--scan-compile", "none", "--out", str(out)])
  saved = json.loads(out.read_text())
  assert saved["configs"][0]["throughput"] == record["configs"][0]["throughput"]
  for key in ("machine", "command", "rounds", "load_average_start", "load_average_end",
              "max_rss_mib", "configs"):
    assert key in saved, key
  assert {"cpu", "cores", "jax", "date"} <= set(saved["machine"])
  (cfg,) = saved["configs"]
  assert cfg["name"] == "vit_s4" and cfg["units"] == "images/s" and cfg["batch"] == 4
  for key in ("throughput", "ratio", "real_ratio", "goal_met", "compile_s", "xla_mib",
              "params", "samples_s"):
    assert key in cfg, key
  assert set(cfg["throughput"]) == {"ours", "peer"}
  assert all(v > 0 for v in cfg["throughput"].values())
  assert cfg["ratio"] > 0 and cfg["real_ratio"] is None
  assert cfg["compile_s"]["ours"] > 0 and cfg["compile_s"]["peer"] > 0
  assert cfg["params"]["ours"] == cfg["params"]["peer"]   # the peer has the same parameters
  assert [len(s) for s in cfg["samples_s"].values()] == [1, 1]


def test_bench_train_table_reprints_a_saved_record(tmp_path, capsys):
  """`--table` prints the saved record's table without running anything."""
  cfg = {"label": "ViT-S/4 32px (65 tok) b4", "units": "images/s", "goal": 1.0,
         "throughput": {"ours": 120.0, "peer": 100.0}, "ratio": 1.2, "goal_met": True,
         "real_ratio": None, "real_goal_met": None, "compile_s": {"ours": 1.0, "peer": 2.0},
         "xla_mib": {"ours": 3.0, "peer": 4.0}, "params": {"ours": 1e6, "peer": 1e6},
         "data": "synthetic only", "cpu_user_sys_s": {"ours": [[0.5, 0.0]], "peer": [[0.5, 0.0]]},
         "units_per_step": {"ours": [4.0], "peer": [4.0]}}
  saved = {"machine": {"cpu": "Some CPU", "cores": 2, "jax": "0", "backend": "cpu",
                       "date": "2026-01-01"}, "command": "python -m experiments.bench_train",
           "load_average_start": [0.1], "load_average_end": [0.2], "max_rss_mib": 10.0,
           "configs": [cfg]}
  path = tmp_path / "saved.json"
  path.write_text(json.dumps(saved))
  assert bench_train.main(["--table", str(path)]) == saved
  out = capsys.readouterr().out
  assert "# Some CPU, 2 cores" in out
  assert "| ViT-S/4 32px (65 tok) b4 | images/s | 120.0 | 100.0 |" in out
  assert "1.20x (≥1.0: met)" in out and "command: python -m experiments.bench_train" in out
