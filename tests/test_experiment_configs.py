"""Smoke test of every experiment config: the exact config validates and its model builds
(shapes only), then the config trains for a few steps on tiny generated data in the same
format as the real data (IDX files, an image folder, Multi30k text files), with the model
shrunk so the whole file stays fast. No ../shared/data needed.
"""
from __future__ import annotations

import glob
import json
import importlib.util
import os

import jax
import numpy as np
import pytest

from attn_jax.data import sources
from attn_jax.train import config as config_lib
from attn_jax.train import models as models_lib
from attn_jax.train import runconfig
from attn_jax.train.loop import train_and_evaluate
from PIL import Image
from test_data_readers import make_idx_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Config files that take an argument, with every argument they accept.
ARGS = {"fashion_mnist_resnet": ("none", "se", "eca", "cbam"), "cifar10_resnet": ("none", "cbam"),
        "mnist_stn": ("stn", "cnn"), "multi30k_transformer": ("de_en", "en_de"),
        "multi30k_gru": ("de_en", "en_de")}
# Every experiment file (those with a get_config; configs/common.py holds shared pieces).
CASES = [(os.path.basename(p)[:-3], a)
         for p in sorted(glob.glob(os.path.join(ROOT, "configs", "[!_]*.py")))
         if "def get_config" in open(p).read()
         for a in ARGS.get(os.path.basename(p)[:-3], (None,))]


def load_config(name: str, arg: str | None):
  spec = importlib.util.spec_from_file_location(f"configs.{name}",
                                                os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


def _write_multi30k(root: str, n: int = 24) -> str:
  rng = np.random.default_rng(0)
  de = ["ein", "mann", "hund", "läuft", "im", "park", "eine", "frau", "sitzt", "."]
  en = ["a", "man", "dog", "runs", "in", "the", "park", "woman", "sits", "."]
  os.makedirs(root, exist_ok=True)
  for split in ("train", "val", "test_2016_flickr"):
    rows = [rng.integers(0, len(de), rng.integers(3, 9)) for _ in range(n)]
    for lang, words in (("de", de), ("en", en)):
      with open(os.path.join(root, f"{split}.{lang}"), "w", encoding="utf-8") as f:
        f.write("\n".join(" ".join(words[i] for i in r).capitalize() for r in rows) + "\n")
  return root


def _write_image_folder(root: str, classes: int = 10, per_class: int = 2, size: int = 32) -> str:
  """CIFAR-like `<split>/<class>/NNNN.png` folder (the local reader's folder layout)."""
  for split in ("train", "test"):
    for k in range(classes):
      os.makedirs(os.path.join(root, split, f"c{k}"), exist_ok=True)
      for i in range(per_class):
        arr = np.full((size, size, 3), 20 * k + i, np.uint8)
        Image.fromarray(arr).save(os.path.join(root, split, f"c{k}", f"{i:04d}.png"))
  return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("tinydata")
  return {"mnist": make_idx_folder(str(root / "mnist"), 32, 16, size=28, classes=10),
          "fashion_mnist": make_idx_folder(str(root / "fmnist"), 32, 16, size=28, classes=10),
          "cifar10": _write_image_folder(str(root / "cifar")),
          "multi30k": _write_multi30k(str(root / "multi30k"))}


# Smaller values for whichever of these model keys a config has (same architecture family).
_SHRINK = {"depth": 1, "width": 16, "mlp_dim": 16, "num_heads": 2, "embed_width": 16,
           "stn_mlp_dim": 8}


def shrink(config, data_path: str):
  c = config
  for k, v in _SHRINK.items():
    if k in c.model and not isinstance(c.model[k], tuple):
      c.model[k] = v
  for k in ("depth", "widths", "stn_widths"):   # per-stage tuples
    if k in c.model and isinstance(c.model[k], tuple):
      c.model[k] = (1,) * len(c.model[k]) if k == "depth" else (4,) * len(c.model[k])
  if isinstance(c.model.get("num_heads"), tuple):   # Swin: heads per stage
    c.model.num_heads = (2,) * len(c.model.depth)
  c.data.path = data_path
  c.data.max_eval_examples = 8
  c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 2, 2, 2, 1
  c.optim.warmup_steps = 1
  c.batch_size, c.eval_batch_size = 8, 8
  c.progress, c.heatmap, c.async_checkpoint = "off", False, False
  return c


def _data_path(config, tiny_data) -> str:
  if config.data.source == "text":   # the language model: the tiny Multi30k English side
    root = tiny_data["multi30k"]
    config.data.train_files, config.data.eval_files = f"{root}/train.en", f"{root}/val.en"
    config.data.seq_len = 32
    return ""
  if config.data.source == "task":
    return ""
  return tiny_data["multi30k" if config.data.source == "multi30k" else config.data.name]


@pytest.mark.parametrize("name,arg", CASES, ids=[f"{n}:{a}" if a else n for n, a in CASES])
def test_config_validates_and_its_model_builds(name, arg, tiny_data):
  """The exact config: validation, data in its format, the full model (abstractly: no compile)."""
  config = load_config(name, arg)
  config_lib.validate(config)
  config.data.path = _data_path(config, tiny_data) or config.data.path
  config.batch_size = 8
  data = sources.build(config)
  model, task = models_lib.build_model(config.model, data.info)
  batch = data.train.batch_at(0)
  inputs = task.inputs(batch)
  shapes = jax.eval_shape(lambda *x: model.init({"params": jax.random.key(0)}, *x), *inputs)
  logits = jax.eval_shape(lambda v, *x: model.apply(v, *x), shapes, *inputs)
  n_out = {"image": "num_classes", "lm": "vocab_size"}.get(task.data_kind, "tgt_vocab")
  n_out = data.info[n_out]
  assert logits.shape[-1] == n_out
  if config.anchor.metric:                       # every experiment names its published anchor
    assert config.anchor.source


# One training run per config file (its first argument): the arguments only swap the data
# direction or the attention block, which the test above builds for every argument. Config
# files that only resize another one train as that one does (once shrunk, only the attention
# block would differ), so they are built above but not trained again.
DERIVED = {"fashion_mnist_ablation": "fashion_mnist_resnet"}
# The CIFAR-10 Swin config joins a model family that a Fashion-MNIST config trains here to
# the CIFAR-10 reader and augmentation that cifar10_vit trains here; once shrunk, training
# it again would repeat both (it is built above at full size). The CIFAR-10 ResNet config
# trains: its batch-drawn augmentation (data.batch_augment) is its own.
TRAINED_BY_OTHERS = {"cifar10_swin": ("fashion_mnist_swin", "cifar10_vit")}
TRAIN = [(n, a) for n, a in CASES if a == ARGS.get(n, (None,))[0] and n not in DERIVED
         and n not in TRAINED_BY_OTHERS]


def test_configs_trained_by_others_share_their_model_and_data():
  for name, (model_from, data_from) in TRAINED_BY_OTHERS.items():
    c, m, d = (load_config(n, None) for n in (name, model_from, data_from))
    trained = {n for n, _ in TRAIN}
    assert c.model.name == m.model.name and model_from in trained
    assert c.data.source == d.data.source and c.data.name == d.data.name and data_from in trained


def test_derived_configs_only_resize_their_parent():
  sizes = {"model.width", "model.depth", "num_steps", "optim.warmup_steps", "eval_every",
           "checkpoint_every"}
  for name, parent in DERIVED.items():
    c, p = runconfig.flatten(load_config(name, None)), runconfig.flatten(load_config(parent, None))
    assert c.keys() == p.keys()
    assert {k for k in c if c[k] != p[k]} <= sizes, name


@pytest.mark.parametrize("name,arg", TRAIN, ids=[f"{n}:{a}" if a else n for n, a in TRAIN])
def test_config_trains_a_few_steps_on_tiny_data(name, arg, tiny_data, tmp_path):
  """A shrunk copy trains two steps, evaluates and writes its run record."""
  config = load_config(name, arg)
  out = train_and_evaluate(shrink(config, _data_path(config, tiny_data)), str(tmp_path / "run"))
  assert out["step"] == 2 and np.isfinite(out["train"]["loss"])
  assert 0.0 <= out["eval"]["eval_accuracy"] <= 1.0
  record = json.load(open(tmp_path / "run" / "run.json"))
  assert record["step"] == 2 and record["num_params"] > 0 and record["eval"]["step"] == 2


IMAGE_CASES = [(n, a) for n, a in TRAIN if load_config(n, a).data.source == "local"]


@pytest.mark.parametrize("name,arg", IMAGE_CASES, ids=[f"{n}:{a}" if a else n for n, a in IMAGE_CASES])
def test_image_configs_read_the_tfds_catalog_by_name(name, arg):
  """With internet a user switches to tfds with one flag; mock_data stands in for the catalog."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = load_config(name, arg)
  config.data.source = "tfds"
  config.batch_size = 4
  with tfds.testing.mock_data(num_examples=8):
    data = sources.build(config)
    batch = data.train.batch_at(0)
  size = config.data.canvas or {"cifar10": 32}.get(config.data.name, 28)
  assert batch["image"].shape[:3] == (4, size, size) and batch["label"].shape == (4,)
  assert data.info["num_classes"] == 10
