"""Attention figures: the plotting functions on made-up arrays, and experiments/visualize.py end
to end on tiny runs (a few training steps on generated dates and on tiny IDX files)."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from attn_jax import functional as F
from attn_jax.analysis import figures as G
from attn_jax.train.loop import train_and_evaluate   # what experiments.train runs
from experiments import visualize as V
from test_data_readers import make_idx_folder

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """A persistent compilation cache for this module only: `restore` rebuilds the run (the same
  jitted init the training compiled), which then loads from the cache instead of compiling."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = {k: getattr(jax.config, k) for k in keys}
  jax.config.update(keys[0], str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update(keys[1], 0.0)
  cc.reset_cache()
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  cc.reset_cache()


def _png_size(path):
  assert os.path.getsize(path) > 2000
  with Image.open(path) as im:
    assert im.format == "PNG"
    return im.size


def test_every_figure_writes_a_png(tmp_path):
  rng = np.random.default_rng(0)
  items = []
  for s, t in ((5, 4), (9, 7)):
    a = rng.random((t, s))
    items.append((a / a.sum(1, keepdims=True), [f"s{i}" for i in range(s)],
                  [f"t{i}" for i in range(t)]))
  small = _png_size(G.cross_attention_grid(items[:1], str(tmp_path / "c1.png"), "one"))
  two = _png_size(G.cross_attention_grid(items, str(tmp_path / "c2.png"), "two", ["ref a", ""]))
  assert two[0] > small[0]                                  # a second panel makes it wider
  with pytest.raises(ValueError, match=r"items\[0\].*\[len\(tgt_tokens\)=3"):
    G.cross_attention_grid([(items[0][0], items[0][1], ["a", "b", "c"])], str(tmp_path / "x.png"), "")
  _png_size(G.rollout_overlay(rng.random((3, 8, 8, 1)), rng.random((3, 8, 8)), [0, 1, 9],
                              str(tmp_path / "r.png"), G.CLASS_NAMES["fashion_mnist"], [0, 2, 9]))
  mask = np.asarray(F.shifted_window_mask(8, 8, 4, 2))
  _png_size(G.swin_windows(rng.random((16, 16, 3)), 4, 2, mask, str(tmp_path / "w.png")))
  _png_size(G.swin_windows((8, 8), 4, 2, mask, str(tmp_path / "w2.png")))
  with pytest.raises(ValueError, match="has 4 windows, the mask 9"):
    G.swin_windows((8, 8), 4, 2, np.ones((9, 16, 16), bool), str(tmp_path / "x.png"))
  _png_size(G.stn_warps(rng.random((10, 12, 12, 1)), rng.random((10, 12, 12, 1)),
                        str(tmp_path / "s.png"), labels=list(range(10))))
  _png_size(G.gates_per_class({"first": rng.random((10, 8)), "last": rng.random((10, 64))},
                              G.CLASS_NAMES["cifar10"], str(tmp_path / "g.png"), counts=[3] * 10))


# A tiny dates run: 6 steps, checkpoints at 3 and 6. Best by the *largest* eval loss, so that
# --best (step 3) differs from the latest checkpoint (step 6).
_DATES = {"num_steps": 6, "eval_every": 3, "checkpoint_every": 3, "log_every": 3,
          "data.num_train": 256, "data.num_eval": 40, "data.buckets": (32,),   # one compile
          "batch_size": 32, "eval_batch_size": 20, "optim.warmup_steps": 1, "heatmap": False,
          "progress": "off", "model.embed_width": 16, "model.width": 32,
          "best_metric": "eval_loss", "best_mode": "max"}


def test_translation_end_to_end_through_the_flags(tmp_path):
  from absl import flags
  from configs import dates_seq2seq
  c = dates_seq2seq.get_config()
  for key, value in _DATES.items():
    node, *path = [c] + key.split(".")
    for part in path[:-1]:
      node = node[part]
    node[path[-1]] = value
  w = str(tmp_path / "w")
  train_and_evaluate(c, w)
  out = str(tmp_path / "cross.png")
  argv = (["visualize", f"--config={CONFIGS}/dates_seq2seq.py", f"--workdir={w}", "--best",
           "--what=translation", "--num=3", "--max_tokens=12", f"--out={out}"]
          + [f"--config.{k}={v}" for k, v in _DATES.items()])
  fv = flags.FlagValues()                 # not absl's global FLAGS: no clash with other modules
  holders = V.define_flags(fv, argv)
  fv(argv)
  r = V.run(holders)
  assert r["path"] == out and r["step"] == 3 and _png_size(out)[1] > 300
  items = r["arrays"]
  assert len(items) == 3
  for it in items:
    a = it["attention"]
    assert a.shape == (len(it["tgt_tokens"]), len(it["src_tokens"]))
    assert len(it["src_tokens"]) <= 13 and it["src_tokens"][-1] == "</s>"
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-5)   # each output row is a distribution
    assert it["reference"]
  assert [it["index"] for it in items] == sorted(it["index"] for it in items)


def _idx_config(root, model, **data):
  from attn_jax.train import config as config_lib
  c = config_lib.base_config()
  c.model.update(model)
  c.data.source, c.data.path, c.data.name = "local", str(root), "mnist"
  c.data.update(data)
  c.batch_size, c.eval_batch_size, c.progress = 16, 8, "off"
  return c


def _init_checkpoint(config, workdir, edit=None):
  """Saves the initial state (changed by `edit(params)`) as step 1: a run without the cost of
  compiling a train step."""
  from attn_jax.train import checkpoint as ckpt_lib
  from attn_jax.train import loop
  s = loop.setup(config, workdir)
  state = jax.device_get(s.init_state())
  if edit is not None:
    state = state.replace(params=edit(state.params))
  ckpt = ckpt_lib.Checkpointer(workdir, 1, async_save=False)
  ckpt.save(1, state, s.data.train.get_state(), force=True)
  ckpt.close()


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
  return make_idx_folder(str(tmp_path_factory.mktemp("data") / "mnist"))   # 8x8, 4 classes, 20 test


def test_gates_per_class_end_to_end(idx_root, tmp_path):
  c = _idx_config(idx_root, {"name": "resnet", "depth": (2,), "width": 4,
                             "attention": "cbam"})
  w = str(tmp_path / "w")
  _init_checkpoint(c, w)
  r = V.visualize(c, w, "gates", num=0)
  assert r["path"] == os.path.join(w, "gates.png") and _png_size(r["path"])
  gates, counts = r["arrays"]["gates"], r["arrays"]["counts"]
  assert list(gates) == ["stage0_block0/CBAM_0/channel_gate", "stage0_block1/CBAM_0/channel_gate"]
  assert counts.sum() == 20                           # every test image once, padding left out
  assert all(g.shape == (4, 4) for g in gates.values())
  for g in gates.values():
    assert np.all((g > 0) & (g < 1))


def test_stn_end_to_end(idx_root, tmp_path):
  c = _idx_config(idx_root, {"name": "stn_cnn", "widths": (4,), "mlp_dim": 8,
                             "stn_widths": (4,), "stn_mlp_dim": 8},
                  canvas=12, rotate=30.0, translate=1)
  w = str(tmp_path / "w")
  rot = np.array([[0.8, -0.6, 0.1], [0.6, 0.8, 0.0]], np.float32)   # rotation + shift

  def edit(params):   # loc_theta's kernel starts at zero: its bias is the theta of every image
    params["stn"]["loc_theta"]["bias"] = rot.reshape(-1)
    return params

  _init_checkpoint(c, w, edit)
  r = V.visualize(c, w, "stn", num=5, out=str(tmp_path / "stn.png"))
  _png_size(r["path"])
  a = r["arrays"]
  assert a["images"].shape == a["warped"].shape == (5, 12, 12, 1)
  np.testing.assert_allclose(a["theta"], np.broadcast_to(rot, (5, 2, 3)), atol=1e-6)
  warp = F.grid_sample(a["images"], F.affine_grid(a["theta"], (12, 12)))
  np.testing.assert_allclose(a["warped"], np.asarray(warp), atol=1e-5)
  assert not np.allclose(a["warped"], a["images"], atol=1e-2)
  with pytest.raises(ValueError, match="needs model.name='vit'"):
    V.visualize(c, w, "rollout", num=2, out=str(tmp_path / "x.png"))
