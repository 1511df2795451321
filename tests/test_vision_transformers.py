"""ViT and Swin: published parameter counts, patch embedding, windows vs global attention, cost."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from attn_jax.layers import MlpBlock
from attn_jax.vision import (EncoderBlock, SwinBlock, ViT, resnet_variant, swin_variant,
                             vit_variant)
from reference import attention_ref


def KEY(seed: int) -> jax.Array:
  """PRNG keys for the tests. 'rbg' because compiling many threefry draws (model init) takes
  ~8x longer on CPU with jax_threefry_partitionable (jax 0.10); results stay deterministic."""
  return jax.random.key(seed, impl="rbg")


def _named(name: str, num_classes: int, image_size: int | None = None, **kw):
  """'ViT-S/16', 'Swin-T/p2w4' or 'ResNet-20' -> the model (the variant helpers)."""
  if name.startswith("ViT-"):
    return vit_variant(name, num_classes, image_size, **kw)
  if name.startswith("Swin-"):
    return swin_variant(name, num_classes, **kw)
  return resnet_variant(name, num_classes, **kw)


def _num_params(model, size=224):
  """Parameter count from shapes only (jax.eval_shape: nothing allocated or compiled)."""
  shapes = jax.eval_shape(lambda: model.init(KEY(0), jnp.zeros((1, size, size, 3))))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name,count", [("ViT-Ti/16", 5_717_416), ("ViT-S/16", 22_050_664),
                                        ("ViT-B/16", 86_567_656), ("Swin-T", 28_288_354),
                                        ("Swin-S", 49_606_258)])
def test_published_parameter_counts(name, count):
  assert _num_params(_named(name, 1000, image_size=224)) == count


def _tiny_vit(**kw):
  return ViT(5, **{**dict(patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64), **kw})


def test_conv_patch_embedding_equals_linear_projection_of_patches():
  img = jax.random.normal(KEY(0), (2, 16, 12, 3))
  params = _tiny_vit().init(KEY(1), img)["params"]["embedding"]
  conv = nn.Conv(32, (4, 4), strides=(4, 4), padding="VALID").apply({"params": params}, img)
  w = params["kernel"].reshape(4 * 4 * 3, 32)                     # [p, p, c, d] -> [p*p*c, d]
  lin = F.image_to_patches(img, 4) @ w + params["bias"]
  np.testing.assert_allclose(conv.reshape(2, -1, 32), lin, atol=1e-5)


def test_vit_shapes_pooling_posemb_and_sown_attention():
  img = jax.random.normal(KEY(0), (2, 16, 16, 3))
  m = _tiny_vit()
  v = m.init(KEY(1), img)
  assert v["params"]["pos_embedding"].shape == (1, 1 + 16, 32) and "cls" in v["params"]
  logits, state = m.apply(v, img, mutable=["intermediates"])
  assert logits.shape == (2, 5)
  w = [state["intermediates"][f"block{i}"]["attn"]["attention_weights"][0] for i in range(2)]
  assert all(x.shape == (2, 4, 17, 17) for x in w)                # [batch, heads, tokens, tokens]
  np.testing.assert_allclose(w[0].sum(-1), 1.0, rtol=1e-5)
  for kw in (dict(pool="gap"), dict(posemb="sincos2d")):
    p = _tiny_vit(**kw).init(KEY(1), img)["params"]
    assert ("cls" in p) == (kw.get("pool", "cls") == "cls")
    assert ("pos_embedding" in p) == (kw.get("posemb", "learned") == "learned")
  with pytest.raises(F.ShapeError, match="patch_size=4"):
    m.apply(v, jnp.zeros((1, 18, 16, 3)))


def test_vit_resamples_learned_posemb_for_other_resolutions():
  img = jax.random.normal(KEY(0), (2, 16, 16, 3))
  m = _tiny_vit(pool="gap")
  v = m.init(KEY(1), img)
  v["params"]["head"]["kernel"] = jax.random.normal(KEY(2), (32, 5))
  big = m.apply(v, jax.image.resize(img, (2, 24, 24, 3), "bilinear"))
  assert big.shape == (2, 5) and np.all(np.isfinite(big))
  # a table made for 4x4 patches used at 6x6 equals the model with the resampled table
  pe = v["params"]["pos_embedding"]
  grid6 = F.resample_grid_embeddings(pe, (6, 6))
  m6 = _tiny_vit(pool="gap", posemb_grid=(6, 6))
  v6 = jax.tree.map(lambda x: x, v)
  v6["params"]["pos_embedding"] = grid6
  np.testing.assert_allclose(m6.apply(v6, jax.image.resize(img, (2, 24, 24, 3), "bilinear")),
                             big, atol=1e-5)


def test_vit_variants_and_dropout_rng():
  m = vit_variant("ViT-S/4", num_classes=10, image_size=32)
  assert (m.width, m.depth, m.num_heads, m.mlp_dim, m.patch_size) == (384, 12, 6, 1536, 4)
  assert m.posemb_grid == (8, 8)
  with pytest.raises(ValueError, match="unknown variant"):
    vit_variant("ViT-X/16", 10)
  img = jnp.ones((2, 8, 8, 3))
  m = _tiny_vit(dropout_rate=0.5, drop_path_rate=0.5)
  v = m.init(KEY(1), img)
  v["params"]["head"]["kernel"] = jnp.ones((32, 5))
  a = m.apply(v, img, train=True, rngs={"dropout": KEY(0)})
  b = m.apply(v, img, train=True, rngs={"dropout": KEY(1)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(m.apply(v, img), m.apply(v, img))


# ---------------------------------------------------------------- Swin

def test_swin_window_as_large_as_map_equals_global_attention_with_relative_bias():
  """One 6x6 window, no shift (the block drops the shift itself) vs float64 global attention."""
  x = jax.random.normal(KEY(0), (2, 6, 6, 16))
  blk = SwinBlock(num_heads=2, window=6, shift=3)
  v = blk.init(KEY(1), x)
  p = jax.tree.map(np.asarray, v["params"])
  p["window_attention"]["relative_position_bias_table"] = np.asarray(
      jax.random.normal(KEY(2), (11 ** 2, 2)))
  out = blk.apply({"params": p}, x)

  ln = lambda name, t: nn.LayerNorm().apply({"params": p[name]}, t)
  tok = np.asarray(ln("norm1", x), np.float64).reshape(2, 36, 16)
  a = p["window_attention"]["attn"]
  heads = lambda w, b: (tok @ w + b).reshape(2, 36, 2, 8).transpose(0, 2, 1, 3)
  q, k, val = heads(a["W_q"], a["b_q"]), heads(a["W_k"], a["b_k"]), heads(a["W_v"], a["b_v"])
  ys, xs = np.divmod(np.arange(36), 6)                        # brute-force offsets -> table rows
  rows = (ys[:, None] - ys[None] + 5) * 11 + (xs[:, None] - xs[None] + 5)
  bias = p["window_attention"]["relative_position_bias_table"][rows].transpose(2, 0, 1)
  o, _ = attention_ref(q, k, val, bias=bias)
  o = o.transpose(0, 2, 1, 3).reshape(2, 36, 16) @ a["W_o"] + a["b_o"]
  y = np.asarray(x, np.float64) + o.reshape(2, 6, 6, 16)
  mlp = MlpBlock(64).apply({"params": p["mlp"]}, ln("norm2", jnp.asarray(y, jnp.float32)))
  y = y + np.asarray(mlp)
  np.testing.assert_allclose(out, y, atol=1e-4)


def test_window_attention_is_local_and_shift_connects_windows():
  x = jax.random.normal(KEY(0), (1, 8, 8, 16))
  x2 = x.at[:, :4, :4].add(1.0)                                   # change window 0 only
  w = SwinBlock(2, window=4, shift=0)
  v = w.init(KEY(1), x)
  d = np.abs(np.asarray(w.apply(v, x2) - w.apply(v, x))).max(-1)[0]
  assert d[:4, :4].min() > 0 and d[4:].max() == 0 and d[:, 4:].max() == 0
  sw = SwinBlock(2, window=4, shift=2)
  d = np.abs(np.asarray(sw.apply(v, x2) - sw.apply(v, x))).max(-1)[0]
  assert d[4:6, 4:6].min() > 0                                    # reaches across the old border
  assert d[6:, :].max() == 0                                      # still only local


def test_swin_masks_padding_and_shift_regions_in_the_weights():
  x = jax.random.normal(KEY(0), (1, 6, 6, 8))          # padded to 8x8 for window 4
  blk = SwinBlock(2, window=4, shift=2, sow_weights=True)
  v = blk.init(KEY(1), x)
  out, st = blk.apply(v, x, mutable=["intermediates"])
  assert out.shape == x.shape
  (w,) = st["intermediates"]["window_attention"]["attn"]["attention_weights"]
  assert w.shape == (1, 4, 2, 16, 16)                             # [batch, windows, heads, q, k]
  allowed = np.asarray(F.shifted_window_mask(8, 8, 4, 2) & F.window_padding_mask(6, 6, 4, 2))
  w = np.asarray(w)[0]
  for i in range(4):
    assert np.all(w[i][:, ~allowed[i]] == 0)
    assert np.all(w[i][:, allowed[i]] > 0)


def test_swin_any_input_size_variants_and_stochastic_depth():
  m = swin_variant("Swin-T/p2w4", 10, depth=(2, 2), num_heads=(2, 4), width=16)
  assert (m.patch_size, m.window_size) == (2, 4)
  apply = jax.jit(m.apply, static_argnames="train")
  # 30x30 -> 15x15 patches (padded to 16 for window 4) -> merged to 8x8 (odd size padded)
  img = jax.random.normal(KEY(0), (2, 30, 30, 1))
  v = jax.jit(m.init)(KEY(1), img)
  assert apply(v, img).shape == (2, 10)
  a = apply(v, img, train=True, rngs={"dropout": KEY(0)})
  b = apply(v, img, train=True, rngs={"dropout": KEY(1)})
  assert not np.allclose(a, b)                                     # drop_path_rate=0.1 default
  with pytest.raises(ValueError, match="unknown variant"):
    swin_variant("Swin-Q", 10)


def _flops(model, x):
  shapes = jax.eval_shape(lambda: model.init(KEY(0), x))
  cost = jax.jit(model.apply).lower(shapes, x).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_window_attention_cost_is_linear_in_area_global_is_quadratic():
  """XLA's flop counts for one block at 3 map sizes (CPU cost analysis stays exact up to a few
  hundred tokens, so the sizes are small)."""
  sizes = (8, 12, 16)
  n = np.array([s * s for s in sizes], np.float64)
  swin = np.array([_flops(SwinBlock(2, window=4), jnp.zeros((1, s, s, 32))) for s in sizes])
  vit = np.array([_flops(EncoderBlock(2, 64, sow_weights=False), jnp.zeros((1, s * s, 32)))
                  for s in sizes])
  per_token = swin / n
  assert per_token.max() / per_token.min() < 1.02                 # linear: constant per token
  # global: flops = a n + b n^2; the fit through 3 sizes has a large quadratic part
  a, b = np.linalg.lstsq(np.stack([n, n * n], 1), vit, rcond=None)[0]
  np.testing.assert_allclose(a * n + b * n * n, vit, rtol=0.02)
  assert b * n[-1] ** 2 > 0.3 * vit[-1]
  assert vit[-1] / vit[0] > 1.5 * swin[-1] / swin[0]


@pytest.mark.parametrize("name", ["ViT-Ti/4", "Swin-T/p2w4", "ResNet-20"])
def test_bfloat16_compute_float32_params_and_logits(name):
  """Traced only (make_jaxpr / eval_shape): the matmuls and convs run in bf16."""
  model = _named(name, 10, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 16, 16, 3))
  shapes = jax.eval_shape(model.init, KEY(0), x)
  assert {a.dtype for a in jax.tree.leaves(shapes["params"])} == {jnp.dtype(jnp.float32)}
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(shapes)
  heavy = [e.outvars[0].aval.dtype for e in jaxpr.eqns
           if e.primitive.name in ("dot_general", "conv_general_dilated")]
  assert heavy.count(jnp.dtype(jnp.bfloat16)) > 0.6 * len(heavy)
  assert jaxpr.out_avals[0].dtype == jnp.float32
