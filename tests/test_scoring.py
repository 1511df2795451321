"""Stage 1: scoring functions."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attn_jax import functional as F
from reference import rel_err

KEY = jax.random.key(0)


def _qk(d_q=8, d_k=8, lead=(2, 3)):
  kq, kk = jax.random.split(KEY)
  return (jax.random.normal(kq, lead + (5, d_q)), jax.random.normal(kk, lead + (7, d_k)))


def test_dot_and_scaled():
  q, k = _qk()
  ref = np.einsum("...qd,...kd->...qk", np.float64(q), np.float64(k))
  assert rel_err(F.dot_product_scores(q, k), ref) < 1e-6
  assert rel_err(F.scaled_dot_product_scores(q, k), ref / np.sqrt(8)) < 1e-6
  assert rel_err(F.scaled_dot_product_scores(q, k, scale=0.3), ref * 0.3) < 1e-6


def test_scaling_keeps_variance_near_one():
  for d in (4, 64, 1024):
    q = jax.random.normal(jax.random.key(d), (256, d))
    k = jax.random.normal(jax.random.key(d + 1), (256, d))
    var = float(jnp.var(F.scaled_dot_product_scores(q, k)))
    assert 0.85 < var < 1.15, (d, var)


def test_additive_matches_formula_and_shapes():
  q, k = _qk(d_q=6, d_k=10)
  p = F.init_additive_params(jax.random.key(1), 6, 10, hidden=16)
  s = F.additive_scores(q, k, p)
  assert s.shape == (2, 3, 5, 7)
  qn, kn = np.float64(q), np.float64(k)
  ref = np.tanh((qn @ np.float64(p["W_q"]))[..., :, None, :] + (kn @ np.float64(p["W_k"]))[..., None, :, :]) @ np.float64(p["v"])
  assert rel_err(s, ref) < 1e-5
  with pytest.raises(F.ShapeError, match="params\\['W_k'\\]"):
    F.additive_scores(q, k, dict(p, W_k=p["W_q"]))
  # Keys projected once by the caller (no 'W_k'): the same scores; wrong width is named.
  no_wk = {"W_q": p["W_q"], "v": p["v"]}
  assert rel_err(F.additive_scores(q, k @ p["W_k"], no_wk), ref) < 1e-5
  with pytest.raises(F.ShapeError, match="k.*hidden=16"):
    F.additive_scores(q, k, no_wk)


@settings(max_examples=20, deadline=None)
@given(a=st.floats(0.01, 100.0), b=st.floats(0.01, 100.0), seed=st.integers(0, 10**6))
def test_cosine_is_scale_invariant(a, b, seed):
  kq, kk = jax.random.split(jax.random.key(seed))
  q = jax.random.normal(kq, (3, 4, 8))
  k = jax.random.normal(kk, (3, 6, 8))
  s = F.cosine_scores(q, k, temperature=0.5)
  np.testing.assert_allclose(F.cosine_scores(q * a, k * b, temperature=0.5), s, atol=1e-5)
  assert float(jnp.max(jnp.abs(s))) <= 2.0 + 1e-5


def test_gaussian_kernel():
  q = jnp.array([[0.0], [1.0]])
  k = jnp.array([[0.0], [2.0], [-1.0]])
  s = F.gaussian_kernel_scores(q, k, bandwidth=2.0)
  np.testing.assert_allclose(s, -np.array([[0, 4, 1], [1, 1, 4]]) / 8.0, rtol=1e-6)
  with pytest.raises(ValueError, match="'bandwidth'"):
    F.gaussian_kernel_scores(q, k, bandwidth=0.0)


def test_scorers_are_pluggable_and_differentiable():
  q, k = _qk(d_q=6, d_k=10)
  v = jax.random.normal(jax.random.key(9), (2, 3, 7, 4))
  p = F.init_additive_params(jax.random.key(1), 6, 10, hidden=16)
  fn = jax.jit(lambda p, q: F.attention(q, k, v, score_fn=functools.partial(F.additive_scores, params=p)))
  assert fn(p, q).shape == (2, 3, 5, 4)
  g = jax.grad(lambda p: fn(p, q).sum())(p)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))


def test_score_shape_errors():
  q, k = _qk()
  with pytest.raises(F.ShapeError, match="'k' has shape \\(2, 3, 7, 5\\)"):
    F.scaled_dot_product_scores(q, k[..., :5])
  with pytest.raises(F.ShapeError, match="'q'"):
    F.dot_product_scores(jnp.ones(3), k)
