"""Attention: the three stages against a float64 reference and against jax/flax."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads

from attn_jax import functional as F
from reference import attention_ref, rel_err


def _inputs(seed, lead=(2, 3), q_len=5, kv_len=7, d=8, dv=6, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], lead + (q_len, d))
  k = jax.random.normal(ks[1], lead + (kv_len, d))
  v = jax.random.normal(ks[2], lead + (kv_len, dv))
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _random_mask(seed, shape):
  m = np.random.default_rng(seed).random(shape) < 0.7
  m[..., 0] = True  # at least one valid key per row so every implementation agrees
  return m


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", ["none", "mask", "valid_lens", "per_query_lens", "bias", "causal"])
def test_against_float64_reference(dtype, tol, case):
  seed = np.random.SeedSequence().entropy % 2**31  # fresh inputs every run
  q, k, v = _inputs(seed, dtype=dtype)
  kw, keep, bias = {}, None, None
  if case == "mask":
    keep = _random_mask(seed, (2, 1, 5, 7))
    kw["mask"] = jnp.asarray(keep)
  elif case == "valid_lens":
    lens = np.array([3, 7])
    kw["valid_lens"] = jnp.asarray(lens)
    keep = np.arange(7) < lens[:, None, None, None]
  elif case == "per_query_lens":
    lens = np.array([[1, 2, 3, 4, 5], [7, 6, 5, 4, 3]])
    kw["valid_lens"] = jnp.asarray(lens)
    keep = np.arange(7) < lens[:, None, :, None]
  elif case == "bias":
    bias = np.random.default_rng(seed).normal(size=(3, 5, 7))
    kw["bias"] = jnp.asarray(bias, dtype)
    bias = np.asarray(kw["bias"].astype(jnp.float32))
  elif case == "causal":
    kw["is_causal"] = True
    keep = np.tril(np.ones((5, 7), bool), k=2)
  out, w = F.attention(q, k, v, return_weights=True, **kw)
  as32 = lambda x: np.asarray(jnp.asarray(x).astype(jnp.float32))
  ref_out, ref_w = attention_ref(as32(q), as32(k), as32(v), keep=keep, bias=bias)
  assert out.dtype == dtype
  assert rel_err(as32(out), ref_out) < tol, (case, seed)
  assert rel_err(as32(w), ref_w) < tol, (case, seed)


@pytest.mark.parametrize("case", ["none", "mask", "bias", "causal"])
def test_against_jax_and_flax(case):
  q, k, v = _inputs(11, lead=(2, 4), q_len=6, kv_len=6, d=8, dv=8)
  mask = jnp.asarray(_random_mask(1, (2, 1, 6, 6))) if case == "mask" else None
  bias = jax.random.normal(jax.random.key(2), (1, 4, 6, 6)) if case == "bias" else None
  if case == "causal":
    mask = F.causal_mask(6)[None, None]
  ours = F.attention(q, k, v, mask=mask, bias=bias)
  ours_xla = F.attention(q, k, v, mask=mask, bias=bias, implementation="xla")
  t = lambda x: jnp.swapaxes(x, 1, 2)  # [b, h, t, d] <-> [b, t, h, d]
  jax_out = t(jax.nn.dot_product_attention(t(q), t(k), t(v), bias=bias, mask=mask))
  flax_out = t(nn.dot_product_attention(t(q), t(k), t(v), bias=bias, mask=mask, deterministic=True))
  assert rel_err(ours, jax_out) < 1e-5
  assert rel_err(ours, flax_out) < 1e-5
  assert rel_err(ours_xla, jax_out) < 1e-5


def test_check_grads_attention():
  q, k, v = _inputs(3, lead=(2,), q_len=3, kv_len=4, d=4, dv=3)
  lens = jnp.array([2, 4])
  f = lambda q, k, v: F.attention(q, k, v, valid_lens=lens)
  check_grads(f, (q, k, v), order=2, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_fully_masked_rows_no_nan_gradient():
  q, k, v = _inputs(4)
  lens = jnp.array([[0, 1, 2, 0, 7], [3, 0, 0, 1, 1]])
  loss = lambda q, k, v: jnp.sum(F.attention(q, k, v, valid_lens=lens) ** 2)
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  assert all(np.all(np.isfinite(g)) for g in grads)
  out = F.attention(q, k, v, valid_lens=lens)
  assert np.all(np.asarray(out)[0, :, 0] == 0)


def test_jit_vmap_grad():
  q, k, v = _inputs(5)
  f = jax.jit(lambda q, k, v: F.attention(q, k, v, is_causal=True))
  batched = jax.vmap(lambda q, k, v: F.attention(q, k, v, is_causal=True))(q, k, v)
  np.testing.assert_allclose(f(q, k, v), batched, atol=1e-6)
  g = jax.jit(jax.grad(lambda q: f(q, k, v).sum()))(q)
  assert g.shape == q.shape


def test_dropout_needs_key_and_is_deterministic():
  q, k, v = _inputs(6)
  with pytest.raises(ValueError, match="PRNG"):
    F.attention(q, k, v, dropout_rate=0.5)
  a = F.attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(1))
  b = F.attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(1))
  c = F.attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # Dropout is unbiased: averaging over many keys approaches the no-dropout output.
  keys = jax.random.split(jax.random.key(3), 2000)
  mean = jax.vmap(lambda r: F.attention(q, k, v, dropout_rate=0.3, dropout_rng=r))(keys).mean(0)
  assert rel_err(mean, F.attention(q, k, v)) < 0.05


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 8), seed=st.integers(0, 10**6))
def test_self_attention_is_permutation_equivariant(n, seed):
  x = jax.random.normal(jax.random.key(seed), (n, 4))
  perm = np.random.default_rng(seed).permutation(n)
  np.testing.assert_allclose(F.simple_self_attention(x[perm]), F.simple_self_attention(x)[perm],
                             rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(seed + 1), (3, 4, 4))
  np.testing.assert_allclose(F.projected_self_attention(x[perm], *w),
                             F.projected_self_attention(x, *w)[perm], rtol=1e-5, atol=1e-5)


def test_simple_self_attention_formula():
  x = jax.random.normal(jax.random.key(7), (5, 3))
  xn = np.float64(x)
  s = xn @ xn.T
  w = np.exp(s - s.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  assert rel_err(F.simple_self_attention(x), w @ xn) < 1e-5


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_nadaraya_watson_tiny_bandwidth_is_nearest_neighbour(seed):
  rng = np.random.default_rng(seed)
  xk = np.sort(rng.uniform(0, 5, size=12))
  xk = xk[np.concatenate([[True], np.diff(xk) > 0.05])]  # keys well separated
  yk = rng.normal(size=(len(xk), 2))
  xq = rng.uniform(0, 5, size=6)
  d = np.abs(xq[:, None] - xk[None])
  ds = np.sort(d, axis=1)
  xq = xq[ds[:, 1] - ds[:, 0] > 0.01]  # skip queries equidistant to two keys
  if len(xq) == 0:
    return
  pred = F.nadaraya_watson(jnp.asarray(xq)[:, None], jnp.asarray(xk)[:, None], jnp.asarray(yk),
                           bandwidth=1e-3)
  nearest = yk[np.argmin(np.abs(xq[:, None] - xk[None]), axis=1)]
  np.testing.assert_allclose(pred, nearest, atol=1e-4)


def test_nadaraya_watson_regresses_a_smooth_function():
  x = jnp.linspace(0, 5, 200)[:, None]
  y = jnp.sin(x)
  xq = jnp.linspace(0.5, 4.5, 30)[:, None]
  pred, w = F.nadaraya_watson(xq, x, y, bandwidth=0.1, return_weights=True)
  assert w.shape == (30, 200)
  assert float(jnp.max(jnp.abs(pred - jnp.sin(xq)))) < 0.02


def test_errors_name_the_argument():
  q, k, v = _inputs(8)
  with pytest.raises(F.ShapeError, match="'v' has shape \\(2, 3, 6, 6\\).*kv_len=7"):
    F.attention(q, k, v[..., :6, :])
  with pytest.raises(F.ShapeError, match="'mask'"):
    F.attention(q, k, v, mask=jnp.ones((5, 6), bool))
  with pytest.raises(F.ShapeError, match="'bias'"):
    F.attention(q, k, v, bias=jnp.ones((4, 5, 7)))
  with pytest.raises(ValueError, match="'implementation'"):
    F.attention(q, k, v, implementation="magic")
  with pytest.raises(ValueError, match="xla"):
    F.attention(q, k, v, implementation="xla", return_weights=True)
  with pytest.raises(F.ShapeError, match="'w_k'"):
    F.projected_self_attention(q, jnp.ones((8, 4)), jnp.ones((5, 4)), jnp.ones((8, 4)))
