"""Flax attention layers against the pure functions they are built from."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from attn_jax.layers import AdditiveAttention, MultiHeadAttention


def test_mha_module_equals_functional_and_cache_equals_full():
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  m = MultiHeadAttention(4)
  variables = m.init(jax.random.key(1), x)
  full = m.apply(variables, x, is_causal=True)
  ref = F.multi_head_attention(variables["params"], x, x, 4, is_causal=True)
  np.testing.assert_allclose(full, ref, atol=1e-6)
  md = MultiHeadAttention(4, decode=True)
  cache = md.init(jax.random.key(1), x)["cache"]
  outs = []
  for t in range(6):
    o, upd = md.apply({"params": variables["params"], "cache": cache}, x[:, t:t + 1],
                      mutable=["cache"])
    cache = upd["cache"]
    outs.append(o)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_mha_sows_weights_and_checks_heads():
  x = jax.random.normal(jax.random.key(0), (2, 5, 12))
  m = MultiHeadAttention(3, sow_weights=True)
  variables = m.init(jax.random.key(1), x)
  _, state = m.apply(variables, x, valid_lens=jnp.array([5, 2]), mutable=["intermediates"])
  (w,) = state["intermediates"]["attention_weights"]
  assert w.shape == (2, 3, 5, 5)
  assert np.all(np.asarray(w)[1, :, :, 2:] == 0)
  with pytest.raises(ValueError, match="num_heads=5"):
    MultiHeadAttention(5).init(jax.random.key(1), x)


def test_additive_attention_module():
  q = jax.random.normal(jax.random.key(0), (2, 3, 6))
  kv = jax.random.normal(jax.random.key(1), (2, 7, 10))
  m = AdditiveAttention(hidden=8, sow_weights=True)
  variables = m.init(jax.random.key(2), q, kv, kv)
  out, state = m.apply(variables, q, kv, kv, valid_lens=jnp.array([7, 4]), mutable=["intermediates"])
  assert out.shape == (2, 3, 10)
  (w,) = state["intermediates"]["attention_weights"]
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(w)[1, :, 4:] == 0)
