"""Checkpoints in and out (`attn_jax.pretrained`), on checkpoints generated here with the key
names and shapes of each format at tiny widths (nothing is downloaded)."""
import functools
import importlib.util
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import pretrained as P
from attn_jax.pretrained import layout as L
from attn_jax.vision import SwinTransformer, ViT
from pretrained_layouts import google_from_timm, rel_index, swin_state, timm_vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = np.random.default_rng(9).normal(size=(2, 16, 16, 3)).astype(np.float32)


def _save(tmp_path, name, sd):
  path = str(tmp_path / name)
  if name.endswith(".npz"):
    np.savez(path, **sd)
  else:
    P.write_safetensors(path, sd)
  return path


@functools.partial(jax.jit, static_argnums=0)
def apply(model, params, images):
  """Logits; one compile per model configuration for the whole file."""
  return model.apply({"params": params}, images)


def random_params(model, images, seed=0):
  """Random values in the shapes of `model.init` (nothing compiled: `jax.eval_shape`)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(images))["params"]
  return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)


def _equal_trees(a, b):
  fa, fb = L.flatten(a), L.flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


def test_safetensors_writer_and_reader(tmp_path):
  import ml_dtypes
  tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": np.array([1.5, -2.0], ml_dtypes.bfloat16), "c": np.array(3, np.int64),
             "d": np.zeros((0, 4), np.float16), "e": np.array([True, False])}
  path = str(tmp_path / "t.safetensors")
  P.write_safetensors(path, tensors, {"note": "hi"})
  raw = open(path, "rb").read()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8:8 + n])
  assert (8 + n) % 8 == 0 and header["__metadata__"] == {"note": "hi"}
  assert header["a.weight"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
  assert len(raw) == 8 + n + max(v["data_offsets"][1] for k, v in header.items() if k[0] != "_")
  back, meta = P.read_safetensors(path)
  assert meta == {"note": "hi"} and back.keys() == tensors.keys()
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)


def test_safetensors_agrees_with_the_reference_library(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  x = {"w": np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32),
       "i": np.arange(7, dtype=np.int32)}
  st.save_file(x, str(tmp_path / "lib.safetensors"))
  ours, _ = P.read_safetensors(str(tmp_path / "lib.safetensors"))
  P.write_safetensors(str(tmp_path / "ours.safetensors"), x)
  theirs = st.load_file(str(tmp_path / "ours.safetensors"))
  for k in x:
    assert np.array_equal(ours[k], x[k]) and np.array_equal(theirs[k], x[k])


def test_truncated_and_unknown_files_are_named_errors(tmp_path):
  path = _save(tmp_path, "vit.safetensors", timm_vit())
  raw = open(path, "rb").read()
  open(tmp_path / "cut.safetensors", "wb").write(raw[:len(raw) // 2])
  with pytest.raises(P.CheckpointFormatError, match=r"truncated: tensor '.+' needs bytes"):
    P.read_checkpoint(str(tmp_path / "cut.safetensors"))
  open(tmp_path / "tiny.safetensors", "wb").write(raw[:5])
  with pytest.raises(P.CheckpointFormatError, match="truncated safetensors file"):
    P.read_checkpoint(str(tmp_path / "tiny.safetensors"))
  npz = _save(tmp_path, "vit.npz", google_from_timm(timm_vit(), 2))
  raw = open(npz, "rb").read()
  open(tmp_path / "cut.npz", "wb").write(raw[:len(raw) // 2])
  with pytest.raises(P.CheckpointFormatError, match="cut.npz: not a readable .npz"):
    P.read_checkpoint(str(tmp_path / "cut.npz"))
  open(tmp_path / "noise.ckpt", "wb").write(b"\x00 not a checkpoint")
  with pytest.raises(P.CheckpointFormatError, match="unknown checkpoint file type"):
    P.read_checkpoint(str(tmp_path / "noise.ckpt"))


def test_timm_vit_three_lines_and_the_key_map(tmp_path):
  sd = timm_vit()
  path = _save(tmp_path, "vit.safetensors", sd)
  model = P.model_for(path)                                   # build
  params, report = P.load(model, path)                        # load
  logits = model.apply({"params": params}, IMAGES)            # predict
  assert logits.shape == (2, 5) and np.isfinite(logits).all()
  assert (model.width, model.depth, model.mlp_dim, model.pool) == (8, 2, 16, "cls")
  assert len(report.loaded) == len(L.flatten(params)) and not report.unused
  a = params["block1"]["attn"]
  np.testing.assert_array_equal(a["W_k"], sd["blocks.1.attn.qkv.weight"][8:16].T)
  np.testing.assert_array_equal(a["b_v"], sd["blocks.1.attn.qkv.bias"][16:])
  np.testing.assert_array_equal(params["embedding"]["kernel"][1, 2, 0],
                                sd["patch_embed.proj.weight"][:, 0, 1, 2])
  np.testing.assert_array_equal(params["head"]["kernel"], sd["head.weight"].T)


@pytest.mark.parametrize("style,scanned", [("vision_transformer", False), ("big_vision", False),
                                           ("big_vision", True)])
def test_google_npz_gives_the_same_params_as_timm(tmp_path, style, scanned):
  sd = timm_vit()
  sd["pos_embed"][:, 0] = 0.0       # big_vision has no class-token position: the same function
  ref, _ = P.load(ViT(5, patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16),
                  _save(tmp_path, "t.safetensors", sd))
  path = _save(tmp_path, f"{style}.npz", google_from_timm(sd, heads=2, style=style,
                                                          scanned=scanned))
  model = P.model_for(path)
  assert model.num_heads == 2 and model.mlp_activation == "gelu_tanh"
  params, report = P.load(model, path)
  _equal_trees(params, ref)
  assert report.layout == ("vision_transformer ViT" if style == "vision_transformer"
                           else "big_vision ViT")
  assert apply(model, params, IMAGES).shape == (2, 5)


def test_gap_pre_logits_and_unsupported_heads(tmp_path):
  sd = timm_vit(cls=False)
  g = google_from_timm(sd, heads=2)
  g["pre_logits/kernel"] = np.ones((8, 6), np.float32)
  g["pre_logits/bias"] = np.zeros(6, np.float32)
  g["head/kernel"] = np.ones((6, 5), np.float32)
  path = _save(tmp_path, "gap.npz", g)
  model = P.model_for(path)
  assert (model.pool, model.representation_size) == ("gap", 6)
  params, report = P.load(model, path)
  assert params["pre_logits"]["kernel"].shape == (8, 6)
  assert apply(model, params, IMAGES).shape == (2, 5)
  plain = ViT(5, patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16, pool="gap")
  _, report = P.load(plain, path)   # fine-tuning drops the pre-logits layer
  assert report.unused["pre_logits/kernel"].startswith("no such parameter") and report.initialised
  timm_gap = _save(tmp_path, "fc.safetensors", timm_vit(cls=False, fc_norm=True))
  with pytest.raises(P.CheckpointFormatError, match="fc_norm=True.*set fc_norm"):
    P.load(plain, timm_gap)
  assert "fc_norm" in P.load(plain.clone(fc_norm=True), timm_gap)[0]
  g["MAPHead_0/probe"] = np.zeros((1, 1, 8), np.float32)
  with pytest.raises(P.CheckpointFormatError, match="MAP head"):
    P.load(plain, _save(tmp_path, "map.npz", g))


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_swin_layouts_and_scan_layers(tmp_path, layout):
  sd = swin_state(layout=layout)
  path = _save(tmp_path, f"{layout}.safetensors", sd)
  model = P.model_for(path)
  assert (model.depth, model.num_heads, model.window_size, model.norm_eps) == ((2, 2), (1, 2),
                                                                                4, 1e-5)
  images = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
  params, report = P.load(model, path, image_size=32)
  scanned, _ = P.load(model.clone(scan_layers=True), path, image_size=32)
  assert "stage0_pair_scan" in scanned
  _equal_trees(L.unrolled(model.clone(scan_layers=True), scanned), params)
  assert apply(model, params, images).shape == (1, 5)
  np.testing.assert_array_equal(params["merge0"]["reduction"]["kernel"],
                                sd[f"layers.{1 if layout == 'timm' else 0}.downsample."
                                   "reduction.weight"].T)
  if layout == "microsoft":
    assert set(report.unused) == {k for k in sd if k.endswith(("index", "mask"))}
    bad = dict(sd)
    bad["layers.0.blocks.0.attn.relative_position_index"] = rel_index(4).T + 1
    with pytest.raises(P.CheckpointFormatError, match="relative_position_index' differs"):
      P.load(model, _save(tmp_path, "bad.safetensors", bad), image_size=32)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] float64 resize weights: half-pixel centres, clamped at the edges."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    s = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
    i0 = int(np.floor(s))
    i1 = min(i0 + 1, n_in - 1)
    m[i, i0] += 1 - (s - i0)
    m[i, i1] += s - i0
  return m


def resize_ref(grid: np.ndarray, n_out: int) -> np.ndarray:
  """[n, n, c] -> [n_out, n_out, c] bilinear in float64 (scipy's too, when installed)."""
  m = bilinear_matrix(grid.shape[0], n_out)
  out = np.einsum("ai,bj,ijc->abc", m, m, grid.astype(np.float64))
  if importlib.util.find_spec("scipy"):
    from scipy import ndimage
    z = n_out / grid.shape[0]
    sc = ndimage.zoom(grid.astype(np.float64), (z, z, 1), order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(out, sc, atol=1e-12)
  return out


def test_vit_224_checkpoint_at_384(tmp_path):
  sd = timm_vit(width=8, depth=1, patch=16, grid=14, classes=3)
  path = _save(tmp_path, "vit224.safetensors", sd)
  model = P.model_for(path, posemb_grid=(24, 24))
  params, report = P.load(model, path)
  table = params["pos_embedding"]
  assert table.shape == (1, 1 + 24 * 24, 8)
  np.testing.assert_array_equal(table[:, 0], sd["pos_embed"][:, 0])   # the class token row
  ref = resize_ref(sd["pos_embed"][0, 1:].reshape(14, 14, 8), 24).reshape(576, 8)
  np.testing.assert_allclose(table[0, 1:], ref, rtol=1e-5, atol=1e-5)
  assert "grid 14x14 -> 24x24" in report.resampled["pos_embedding"]
  assert model.apply({"params": params}, jnp.ones((1, 384, 384, 3))).shape == (1, 3)


def test_swin_window_7_checkpoint_at_window_12(tmp_path):
  sd = swin_state(width=4, depth=(2, 2), heads=(1, 2), window=7, patch=4)
  path = _save(tmp_path, "swin_w7.safetensors", sd)
  model = P.model_for(path, window_size=12)
  params, report = P.load(model, path, image_size=96)   # maps 24, 12: window 12 in both
  for s, b in ((0, 1), (1, 0)):
    table = params[f"stage{s}_block{b}"]["window_attention"]["relative_position_bias_table"]
    old = sd[f"layers.{s}.blocks.{b}.attn.relative_position_bias_table"]
    ref = resize_ref(old.reshape(13, 13, -1), 23).reshape(23 * 23, -1)
    assert table.shape == ref.shape
    np.testing.assert_allclose(table, ref, rtol=1e-5, atol=1e-5)
  assert len(report.resampled) == 4 and "window 7 -> 12" in str(report)
  out = apply(model, params, jnp.ones((1, 96, 96, 3)))
  assert out.shape == (1, 5) and np.isfinite(out).all()


def test_new_head_and_load_head_false(tmp_path):
  path = _save(tmp_path, "vit.safetensors", timm_vit(classes=5))
  model = ViT(7, patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16)
  params, report = P.load(model, path)
  assert params["head"]["kernel"].shape == (8, 7) and not params["head"]["kernel"].any()
  assert set(report.initialised) == {"head/kernel", "head/bias"}
  assert set(report.unused) == {"head.weight", "head.bias"}
  text = str(report)
  assert "newly initialised:" in text and "head/kernel: checkpoint [8, 5], model [8, 7]" in text
  _, report = P.load(model.clone(num_classes=5), path, load_head=False)
  assert report.initialised["head/bias"] == "load_head=False; zeros"


def test_wrong_architecture_missing_keys_and_bad_shapes(tmp_path):
  vit = ViT(5, patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16)
  swin_path = _save(tmp_path, "swin.safetensors", swin_state())
  with pytest.raises(P.CheckpointFormatError, match="holds a timm SWIN, but the model is a ViT"):
    P.load(vit, swin_path)
  with pytest.raises(P.CheckpointFormatError, match="unknown architecture"):
    P.load(vit, _save(tmp_path, "odd.safetensors", {"conv1.weight": np.zeros((2, 2), np.float32)}))
  sd = timm_vit()
  del sd["blocks.1.norm2.bias"]
  with pytest.raises(P.CheckpointFormatError, match="missing key 'blocks.1.norm2.bias'"):
    P.load(vit, _save(tmp_path, "missing.safetensors", sd))
  with pytest.raises(P.CheckpointFormatError,
                     match=r"'blocks.0.mlp.fc1.bias' \(-> block0/mlp/fc1/bias\) has shape "
                           r"\[16\], which cannot become the model's \[32\]"):
    P.load(vit.clone(mlp_dim=32), _save(tmp_path, "vit.safetensors", timm_vit()))
  with pytest.raises(P.CheckpointFormatError, match="depth=2, the model 3"):
    P.load(vit.clone(depth=3), str(tmp_path / "vit.safetensors"))
  with pytest.raises(P.CheckpointFormatError, match="pool='cls', the model 'gap'"):
    P.load(vit.clone(pool="gap"), str(tmp_path / "vit.safetensors"))
  with pytest.raises(P.CheckpointFormatError, match="format='big_vision' but the keys"):
    P.load(vit, str(tmp_path / "vit.safetensors"), format="big_vision")


@pytest.mark.parametrize("kind", ["vit_cls_scan", "vit_gap_fc_norm", "swin_scan"])
def test_export_then_import_is_bit_exact(tmp_path, kind):
  if kind.startswith("vit"):
    model = ViT(5, patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16,
                scan_layers=kind.endswith("scan"), pool="cls" if "cls" in kind else "gap",
                fc_norm="fc_norm" in kind)
    images = IMAGES
  else:
    model = SwinTransformer(5, patch_size=2, window_size=4, width=8, depth=(2, 2),
                            num_heads=(1, 2), scan_layers=True, norm_eps=1e-5)
    images = np.zeros((1, 32, 32, 3), np.float32)
  params = random_params(model, images)
  path = str(tmp_path / "out.safetensors")
  sd = P.export_timm(model, params, path)
  assert all("/" not in k for k in sd) and "head.weight" in sd or "head.fc.weight" in sd
  rebuilt = P.model_for(path)
  fields = (("width", "depth", "num_heads", "mlp_dim", "pool", "fc_norm", "mlp_activation")
            if kind.startswith("vit") else
            ("width", "depth", "num_heads", "window_size", "patch_size", "norm_eps"))
  assert all(getattr(rebuilt, f) == getattr(model, f) for f in fields)
  back, report = P.load(model, path, image_size=images.shape[1:3])
  _equal_trees(back, params)
  assert not (report.resampled or report.initialised or report.unused)


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_finetune_config_starts_from_a_checkpoint_and_freezes(tmp_path, capsys):
  from attn_jax.train.loop import train_and_evaluate
  from test_data_readers import make_idx_folder
  config = _load_config("vit_finetune")
  config.model.update(width=16, depth=1, num_heads=2, mlp_dim=16)
  pre = ViT(10, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=16)   # made at 28 px
  ckpt = str(tmp_path / "pre.safetensors")
  params = random_params(pre, np.zeros((1, 28, 28, 1), np.float32))
  sd = P.export_timm(pre, params, ckpt)
  config.init_from = ckpt
  config.data.path = make_idx_folder(str(tmp_path / "mnist"), 16, 8, size=28, classes=10)
  config.data.max_eval_examples = 8
  config.num_steps, config.eval_every, config.checkpoint_every, config.log_every = 2, 2, 2, 1
  config.optim.warmup_steps = 1
  config.batch_size = config.eval_batch_size = 8
  config.progress, config.heatmap, config.async_checkpoint = "off", False, False
  out = train_and_evaluate(config, str(tmp_path / "run"))
  printed = capsys.readouterr().out
  assert "timm ViT checkpoint" in printed and "grid 7x7 -> 9x9" in printed
  final = out["state"].params
  assert out["step"] == 2 and final["pos_embedding"].shape == (1, 82, 16)
  np.testing.assert_array_equal(final["embedding"]["kernel"],
                                sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))   # frozen
  assert not np.array_equal(final["block0"]["attn"]["W_q"], params["block0"]["attn"]["W_q"])
  out = train_and_evaluate(config, str(tmp_path / "run"))   # resumes its own checkpoint
  assert out["step"] == 2 and "timm ViT checkpoint" not in capsys.readouterr().out
  _equal_trees(out["state"].params, final)
  P.export_run(str(tmp_path / "run"), str(tmp_path / "tuned.safetensors"))   # and back out
  tuned = P.model_for(str(tmp_path / "tuned.safetensors"))
  assert tuned.posemb_grid == (9, 9)
  _equal_trees(P.load(tuned, str(tmp_path / "tuned.safetensors"))[0], final)
