"""Parity with PyTorch (skipped cleanly when torch is not installed; CI installs it)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from reference import rel_err

torch = pytest.importorskip("torch")


def _t(x):
  return torch.from_numpy(np.asarray(x, np.float32).copy())


@pytest.mark.parametrize("case", ["none", "mask", "causal"])
def test_scaled_dot_product_attention(case):
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (2, 4, 6, 8))
  k = jax.random.normal(ks[1], (2, 4, 9, 8))
  v = jax.random.normal(ks[2], (2, 4, 9, 5))
  mask = None
  if case == "mask":
    mask = jax.random.bernoulli(ks[3], 0.7, (2, 1, 6, 9)).at[..., 0].set(True)
  kw = {"is_causal": True} if case == "causal" else {}
  ours = F.attention(q, k, v, mask=mask, **kw)
  if case == "causal":  # torch aligns the causal mask at the top-left corner
    kw, mask = {}, F.causal_mask(6, 9, offset=3)
  ref = torch.nn.functional.scaled_dot_product_attention(
      _t(q), _t(k), _t(v), attn_mask=None if mask is None else torch.from_numpy(np.asarray(mask)), **kw)
  assert rel_err(ours, ref.numpy()) < 1e-5


@pytest.mark.parametrize("kdim,vdim", [(None, None), (10, 6)])
def test_multihead_attention_with_copied_weights(kdim, vdim):
  torch.manual_seed(0)
  e, h = 16, 4
  mha = torch.nn.MultiheadAttention(e, h, batch_first=True, kdim=kdim, vdim=vdim, bias=True)
  with torch.no_grad():
    for prm in mha.parameters():
      prm.normal_(0, 0.3)
  kdim, vdim = kdim or e, vdim or e
  if mha._qkv_same_embed_dim:
    wq, wk, wv = mha.in_proj_weight.detach().numpy().reshape(3, e, e)
  else:
    wq, wk, wv = (mha.q_proj_weight.detach().numpy(), mha.k_proj_weight.detach().numpy(),
                  mha.v_proj_weight.detach().numpy())
  bq, bk, bv = mha.in_proj_bias.detach().numpy().reshape(3, e)
  params = {"W_q": wq.T, "W_k": wk.T, "W_v": wv.T, "b_q": bq, "b_k": bk, "b_v": bv,
            "W_o": mha.out_proj.weight.detach().numpy().T, "b_o": mha.out_proj.bias.detach().numpy()}
  params = jax.tree.map(jnp.asarray, params)
  rng = np.random.default_rng(1)
  xq = rng.normal(size=(3, 5, e)).astype(np.float32)
  xk = rng.normal(size=(3, 7, kdim)).astype(np.float32)
  xv = rng.normal(size=(3, 7, vdim)).astype(np.float32)
  lens = np.array([7, 3, 5])
  key_padding = np.arange(7)[None] >= lens[:, None]  # torch: True = ignore
  ref_out, ref_w = mha(_t(xq), _t(xk), _t(xv), key_padding_mask=torch.from_numpy(key_padding),
                       need_weights=True, average_attn_weights=False)
  out, w = F.multi_head_attention(params, jnp.asarray(xq), jnp.asarray(xk), h, x_v=jnp.asarray(xv),
                                  valid_lens=jnp.asarray(lens), return_weights=True)
  assert rel_err(out, ref_out.detach().numpy()) < 1e-5
  assert rel_err(w, ref_w.detach().numpy()) < 1e-5
