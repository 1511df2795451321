"""SE / ECA / CBAM gates, the attention ResNet and the Spatial Transformer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.vision import (CBAM, ECA, STN, ResNet, SpatialTransformer, SqueezeExcitation,
                             channel_attention, eca_kernel_size)

from test_vision_transformers import KEY  # rbg keys: fast init compiles


X = jax.random.normal(KEY(0), (2, 6, 5, 32))


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _gates(module, x=X):
  v = module.init(KEY(1), x)
  out, st = module.apply(v, x, mutable=["intermediates"])
  assert out.shape == x.shape
  return v["params"], out, jax.tree.map(np.asarray, st["intermediates"])


def test_se_gate_formula_and_range():
  p, out, st = _gates(SqueezeExcitation(reduction=4))
  (gate,) = st["gate"]
  assert gate.shape == (2, 1, 1, 32) and 0 < gate.min() and gate.max() < 1
  s = np.asarray(X).mean((1, 2))
  h = np.maximum(s @ p["reduce"]["kernel"] + p["reduce"]["bias"], 0)
  ref = _sigmoid(h @ p["expand"]["kernel"] + p["expand"]["bias"])
  np.testing.assert_allclose(gate[:, 0, 0], ref, rtol=1e-5)
  np.testing.assert_allclose(out, np.asarray(X) * ref[:, None, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels,k", [(16, 3), (32, 3), (64, 3), (128, 5), (256, 5),
                                        (512, 5), (1024, 5), (8192, 7)])
def test_eca_kernel_size_rule(channels, k):
  assert eca_kernel_size(channels) == k and k % 2 == 1


def test_eca_is_a_1d_conv_across_channels():
  p, out, st = _gates(ECA())
  (gate,) = st["gate"]
  w = np.asarray(p["conv"]["kernel"])[:, 0, 0]
  assert w.shape == (eca_kernel_size(32),) and 0 < gate.min() and gate.max() < 1
  s = np.pad(np.asarray(X).mean((1, 2)), ((0, 0), (1, 1)))          # 'SAME' zero padding, k=3
  ref = _sigmoid(np.stack([s[:, c:c + 3] @ w for c in range(32)], 1))
  np.testing.assert_allclose(gate[:, 0, 0], ref, rtol=1e-5)


def test_cbam_gates_shapes_and_range():
  _, out, st = _gates(CBAM(reduction=8))
  (cg,), (sg,) = st["channel_gate"], st["spatial_gate"]
  assert cg.shape == (2, 1, 1, 32) and sg.shape == (2, 6, 5, 1)
  for g in (cg, sg):
    assert 0 < g.min() and g.max() < 1
  np.testing.assert_allclose(out, np.asarray(X) * cg * sg, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="kind must be one of"):
    channel_attention("gated")


def test_resnet_attention_kinds_and_batch_stats():
  img = jax.random.normal(KEY(0), (4, 16, 16, 3))
  names = {}
  for kind in ("none", "se", "eca", "cbam"):                     # structure from shapes only
    m = ResNet(5, depth=(1, 1), width=16, attention=kind, reduction=4)
    names[kind] = set(jax.eval_shape(m.init, KEY(1), img)["params"]["stage1_block0"])
  assert names["none"] == {"conv1", "bn1", "conv2", "bn2", "proj", "proj_bn"}
  assert names["se"] - names["none"] == {"SqueezeExcitation_0"}
  assert names["eca"] - names["none"] == {"ECA_0"}
  assert names["cbam"] - names["none"] == {"CBAM_0"}
  # STN in front of the CBAM ResNet: identity at init, batch_stats still threaded through
  stn = STN(m)
  v = jax.jit(stn.init)(KEY(1), img)
  assert set(v["params"]) == {"stn", "classifier"}
  logits, upd = stn.apply(v, img, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 5)
  bs = upd["batch_stats"]["classifier"]["stem_bn"]["mean"]
  assert not np.allclose(bs, v["batch_stats"]["classifier"]["stem_bn"]["mean"])
  direct = m.apply({"params": v["params"]["classifier"],
                    "batch_stats": v["batch_stats"]["classifier"]}, img)
  np.testing.assert_allclose(stn.apply(v, img), direct, atol=1e-5)


def test_spatial_transformer_starts_as_identity():
  img = jax.random.normal(KEY(0), (2, 12, 12, 3))
  st = SpatialTransformer()
  v = jax.jit(st.init)(KEY(1), img)
  out, inter = st.apply(v, img, mutable=["intermediates"])
  np.testing.assert_allclose(out, img, atol=1e-6)
  np.testing.assert_allclose(inter["intermediates"]["theta"][0], np.tile(np.eye(2, 3), (2, 1, 1)))
  # out_size changes the output grid, not the parameters
  assert SpatialTransformer(out_size=(6, 6)).apply(v, img).shape == (2, 6, 6, 3)
  # a localisation net that outputs the 90-degree rotation theta rotates the image
  v["params"]["loc_theta"]["bias"] = jnp.asarray([0.0, -1.0, 0.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(st.apply(v, img), np.rot90(img, k=1, axes=(1, 2)), atol=1e-5)
