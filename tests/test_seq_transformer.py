"""Transformer layers against torch.nn.TransformerEncoderLayer / DecoderLayer with copied weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.seq import DecoderLayer, EncoderLayer
from reference import rel_err

torch = pytest.importorskip("torch")

E, H, FF = 16, 4, 32


def _t(x):
  return torch.from_numpy(np.asarray(x, np.float32).copy())


def _np(p):
  return p.detach().numpy()


def _mha_params(mha):
  wq, wk, wv = _np(mha.in_proj_weight).reshape(3, E, E)
  bq, bk, bv = _np(mha.in_proj_bias).reshape(3, E)
  return {"W_q": wq.T, "W_k": wk.T, "W_v": wv.T, "b_q": bq, "b_k": bk, "b_v": bv,
          "W_o": _np(mha.out_proj.weight).T, "b_o": _np(mha.out_proj.bias)}


def _common(layer, n_norms):
  p = {"mlp": {"fc1": {"kernel": _np(layer.linear1.weight).T, "bias": _np(layer.linear1.bias)},
               "fc2": {"kernel": _np(layer.linear2.weight).T, "bias": _np(layer.linear2.bias)}}}
  for i in range(1, n_norms + 1):
    ln = getattr(layer, f"norm{i}")
    p[f"ln{i}"] = {"scale": _np(ln.weight), "bias": _np(ln.bias)}
  p["self_attn"] = _mha_params(layer.self_attn)
  return p


def _randomize(layer):
  torch.manual_seed(0)
  with torch.no_grad():
    for prm in layer.parameters():
      prm.normal_(0, 0.3)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_encoder_layer_matches_torch(pre_ln):
  layer = torch.nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, batch_first=True,
                                           norm_first=pre_ln).eval()
  _randomize(layer)
  params = jax.tree.map(jnp.asarray, _common(layer, 2))
  x = np.random.default_rng(1).normal(size=(3, 7, E)).astype(np.float32)
  lens = np.array([7, 3, 5])
  ref = layer(_t(x), src_key_padding_mask=torch.from_numpy(np.arange(7)[None] >= lens[:, None]))
  ours = EncoderLayer(H, FF, pre_ln=pre_ln).apply({"params": params}, jnp.asarray(x),
                                                   jnp.asarray(lens))
  real = np.arange(7)[None, :, None] < lens[:, None, None]  # torch's fast path may zero pads
  assert rel_err(np.where(real, ours, 0), np.where(real, ref.detach().numpy(), 0)) < 1e-5


@pytest.mark.parametrize("pre_ln", [False, True])
def test_decoder_layer_matches_torch(pre_ln):
  layer = torch.nn.TransformerDecoderLayer(E, H, FF, dropout=0.0, batch_first=True,
                                           norm_first=pre_ln).eval()
  _randomize(layer)
  params = _common(layer, 3)
  params["cross_attn"] = _mha_params(layer.multihead_attn)
  params = jax.tree.map(jnp.asarray, params)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 6, E)).astype(np.float32)
  mem = rng.normal(size=(3, 7, E)).astype(np.float32)
  lens = np.array([7, 3, 5])
  causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
  ref = layer(_t(x), _t(mem), tgt_mask=causal,
              memory_key_padding_mask=torch.from_numpy(np.arange(7)[None] >= lens[:, None]))
  ours, w = DecoderLayer(H, FF, pre_ln=pre_ln).apply({"params": params}, jnp.asarray(x),
                                                      jnp.asarray(mem), jnp.asarray(lens),
                                                      return_weights=True)
  assert rel_err(ours, ref.detach().numpy()) < 1e-5
  assert w.shape == (3, H, 6, 7)
  assert np.all(np.asarray(w)[1, :, :, 3:] == 0)
