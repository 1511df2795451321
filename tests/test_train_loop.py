"""The training loop end to end on small files the tests write, plus config validation."""
import json
import os

import jax
import numpy as np
import pytest

from attn_jax.train import config as config_lib
from attn_jax.train.config import ConfigError
from attn_jax.train.loop import train_and_evaluate
from test_data_readers import make_idx_folder, make_image_folder


def tiny_config(path, **overrides):
  """MLP on an 8x8 IDX folder: compiles in about a second."""
  c = config_lib.base_config()
  c.model.name = "mlp"
  c.model.widths = (32,)
  c.data.source = "local"
  c.data.path = str(path)
  c.batch_size = 16
  c.eval_batch_size = 8
  c.num_steps = 5
  c.log_every = 1
  c.eval_every = 5
  c.checkpoint_every = 5
  c.optim.learning_rate = 1e-2
  c.optim.schedule = "constant"
  c.progress = "off"
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def losses_of(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
  return make_idx_folder(str(tmp_path_factory.mktemp("data") / "mnist"))


def test_config_errors_name_the_key(idx_root):
  def bad(match, **kw):
    with pytest.raises(ConfigError, match=match):
      config_lib.validate(tiny_config(idx_root, **kw))

  c = tiny_config(idx_root)
  c.optim.lerning_rate = 0.1
  with pytest.raises(ConfigError, match=r"config.optim.lerning_rate: unknown key"):
    config_lib.validate(c)
  c = tiny_config(idx_root)
  c.model.widht = 3
  with pytest.raises(ConfigError, match=r"config.model.widht: unknown key"):
    config_lib.validate(c)
  bad(r"config.strategy='tpu'", strategy="tpu")
  bad(r"config.optim.name='lamb'", **{"optim.name": "lamb"})
  bad(r"config.optim.warmup_steps=10 exceeds", **{"optim.warmup_steps": 10})
  bad(r"config.best_metric='accuracy'", best_metric="accuracy")
  vit = tiny_config(idx_root)
  vit.model = config_lib.base_config().model
  vit.model.name = "vit"
  vit.model.width, vit.model.num_heads, vit.model.patch_size = 30, 4, 4
  with pytest.raises(ConfigError, match=r"config.model.num_heads=4 does not divide config.model.width=30"):
    config_lib.validate(vit)
  vit.model.width = 32
  vit.data.source, vit.data.name = "tfds", "mnist"
  vit.model.patch_size = 5
  with pytest.raises(ConfigError, match=r"config.model.patch_size=5 does not divide the image size 28"):
    config_lib.validate(vit)
  assert config_lib.validate(tiny_config(idx_root)) is None
  with pytest.raises(ConfigError, match=r"config.batch_size=15 is not divisible by the 2 devices"):
    config_lib.validate(tiny_config(idx_root, batch_size=15), num_devices=2)


def test_patch_size_checked_against_the_data(idx_root, tmp_path):
  c = tiny_config(idx_root)
  c.model = config_lib.base_config().model
  c.model.name, c.model.patch_size, c.model.width, c.model.num_heads = "vit", 3, 16, 2
  with pytest.raises(ConfigError, match=r"config.model.patch_size=3 does not divide the image size 8x8"):
    train_and_evaluate(c, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_idx_run_learns_and_writes_everything(idx_root, tmp_path):
  wd = str(tmp_path / "run")
  out = train_and_evaluate(tiny_config(idx_root, num_steps=40, eval_every=20, checkpoint_every=20,
                                       log_every=10, best_metric="eval_accuracy"), wd)
  assert out["step"] == 40 and out["eval"]["eval_examples"] == 20   # every test example once
  assert out["eval"]["eval_accuracy"] >= 0.9                          # bright quadrant = class
  for k in ("loss", "accuracy", "learning_rate", "grad_norm", "steps_per_sec", "examples_per_sec"):
    assert k in out["train"]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["20", "40"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tensorboard")))
  losses = losses_of(wd)
  assert len(losses) == 4 and losses[-1] < losses[0]
  # Rerunning with more steps resumes at 40 (no step repeated in the log).
  out2 = train_and_evaluate(tiny_config(idx_root, num_steps=60, eval_every=20, checkpoint_every=20,
                                        log_every=10), wd)
  steps = [r["step"] for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl"))) if "loss" in r]
  assert steps == [10, 20, 30, 40, 50, 60] and out2["step"] == 60


def test_image_folder_with_augmentation_and_adamw(tmp_path):
  root = make_image_folder(str(tmp_path / "imgs"), n_per_class=4)
  c = tiny_config(root, batch_size=8, num_steps=6, eval_every=3, **{
      "data.crop_padding": 2, "data.flip": True, "optim.weight_decay": 0.1,
      "optim.warmup_steps": 2, "optim.schedule": "cosine", "optim.grad_clip_norm": 1.0,
      "dtype": "bfloat16"})
  a = train_and_evaluate(c, str(tmp_path / "a"))
  b = train_and_evaluate(c, str(tmp_path / "b"))
  assert losses_of(str(tmp_path / "a")) == losses_of(str(tmp_path / "b"))   # deterministic
  assert a["train"]["learning_rate"] < c.optim.learning_rate                 # cosine decayed
  assert a["eval"]["eval_examples"] == 8
  assert a["state"].params["Dense_0"]["kernel"].dtype == np.float32           # bf16 compute only


def test_tfds_mock_data_source(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  c = tiny_config("", num_steps=3, eval_every=3, **{"data.source": "tfds", "data.name": "mnist",
                                                    "data.max_eval_examples": 16,
                                                    "optim.name": "sgd", "optim.momentum": 0.9})
  with tfds.testing.mock_data(num_examples=32):
    out = train_and_evaluate(c, str(tmp_path / "w"))
  assert out["step"] == 3 and out["eval"]["eval_examples"] == 16
  assert np.isfinite(out["train"]["loss"])


def _write_pairs(root, n, seed):
  """Reverse-a-word pairs as text files (a learnable toy translation)."""
  rng = np.random.default_rng(seed)
  words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
  src, tgt = [], []
  for _ in range(n):
    s = [words[i] for i in rng.integers(0, len(words), rng.integers(2, 6))]
    src.append(" ".join(s))
    tgt.append(" ".join(s[::-1]).upper())
  os.makedirs(root, exist_ok=True)
  (root / "train.src").write_text("\n".join(src) + "\n")
  (root / "train.tgt").write_text("\n".join(tgt) + "\n")
  return root


def test_text_pairs_seq2seq_with_label_smoothing(tmp_path):
  root = _write_pairs(tmp_path / "txt", 64, 0)
  files = f"{root}/train.src,{root}/train.tgt"
  c = tiny_config("", num_steps=8, eval_every=8, batch_size=8, **{
      "data.source": "pairs", "data.train_files": files, "data.eval_files": files,
      "data.buckets": (8,), "data.min_freq": 1, "data.max_eval_examples": 20,
      "label_smoothing": 0.1})
  c.model = config_lib.base_config().model
  c.model.name, c.model.width, c.model.num_heads, c.model.mlp_dim = "transformer", 16, 2, 32
  c.model.depth, c.model.dropout_rate = 1, 0.0
  out = train_and_evaluate(c, str(tmp_path / "w"))
  assert out["eval"]["eval_examples"] == 20
  assert os.path.exists(out["heatmap"])
  losses = losses_of(str(tmp_path / "w"))
  assert losses[-1] < losses[0]


def test_offline_default_runs_and_draws_heatmap(tmp_path):
  """configs/dates_seq2seq.py (the no-argument default), shortened."""
  from configs import dates_seq2seq
  c = dates_seq2seq.get_config()
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 20, 20, 20, 10
  c.optim.warmup_steps = 5
  c.data.num_train, c.data.num_eval, c.progress = 2000, 100, "off"
  out = train_and_evaluate(c, str(tmp_path / "w"))
  assert out["step"] == 20 and out["eval"]["eval_examples"] == 100
  assert os.path.getsize(out["heatmap"]) > 5000
  assert os.listdir(tmp_path / "w" / "checkpoints") == ["20"]
  # experiments/evaluate.py's function: restores the checkpoint, same eval, plus decoding.
  from attn_jax.analysis.evaluation import evaluate_checkpoint
  m = evaluate_checkpoint(c, str(tmp_path / "w"))
  assert m["step"] == 20
  assert m["eval_loss"] == pytest.approx(out["eval"]["eval_loss"], rel=1e-6)
  assert 0.0 <= m["bleu"] <= 100.0 and len(m["examples"]) == 100
