"""Stage 2: masks and masked softmax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads

from attn_jax import functional as F
from reference import rel_err, softmax_ref

SCORES = jax.random.normal(jax.random.key(0), (2, 2, 4))


def test_masked_softmax_per_sequence_lens():
  w = np.asarray(F.masked_softmax(SCORES, valid_lens=jnp.array([2, 3])))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  assert np.all(w[0, :, 2:] == 0.0) and np.all(w[1, :, 3:] == 0.0)
  assert np.all(w[0, :, :2] > 0) and np.all(w[1, :, :3] > 0)


def test_masked_softmax_per_query_lens():
  lens = np.array([[1, 3], [2, 4]])
  w = np.asarray(F.masked_softmax(SCORES, valid_lens=jnp.asarray(lens)))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  for b in range(2):
    for i in range(2):
      assert np.all(w[b, i, lens[b, i]:] == 0.0)
      assert np.all(w[b, i, :lens[b, i]] > 0.0)
  assert w[0, 0, 0] == 1.0  # one valid key gets all the weight


def test_valid_lens_broadcast_over_heads():
  s = jax.random.normal(jax.random.key(1), (2, 3, 5, 6))  # [batch, heads, q, k]
  lens = jnp.array([2, 6])
  w = F.masked_softmax(s, valid_lens=lens)
  ref = softmax_ref(s, np.arange(6) < np.asarray(lens)[:, None, None, None])
  assert rel_err(w, ref) < 1e-6
  per_q = jnp.array([[1, 2, 3, 4, 5], [6, 5, 4, 3, 2]])
  w = F.masked_softmax(s, valid_lens=per_q)
  ref = softmax_ref(s, np.arange(6) < np.asarray(per_q)[:, None, :, None])
  assert rel_err(w, ref) < 1e-6


def test_fully_masked_row_is_zero_with_finite_grad():
  s = jax.random.normal(jax.random.key(2), (2, 3, 4))
  lens = jnp.array([[0, 2, 4], [1, 0, 3]])
  w = F.masked_softmax(s, valid_lens=lens)
  assert np.all(np.asarray(w)[0, 0] == 0) and np.all(np.asarray(w)[1, 1] == 0)
  g = jax.grad(lambda x: jnp.sum(F.masked_softmax(x, valid_lens=lens) ** 2 * jnp.arange(4.)))(s)
  assert np.all(np.isfinite(g))
  assert np.all(np.asarray(g)[0, 0] == 0)
  mask = jnp.zeros((2, 3, 4), bool)
  g = jax.grad(lambda x: F.masked_softmax(x, mask=mask).sum())(s)
  assert np.all(np.asarray(g) == 0)


def test_check_grads_masked_softmax():
  s = jax.random.normal(jax.random.key(3), (2, 3, 5))
  lens = jnp.array([3, 5])
  check_grads(lambda x: F.masked_softmax(x, valid_lens=lens), (s,), order=2, modes=("rev",),
              atol=1e-2, rtol=1e-2)
  bias = jax.random.normal(jax.random.key(4), (3, 5))
  check_grads(lambda x, b: F.masked_softmax(x, bias=b), (s, bias), order=1, atol=1e-2, rtol=1e-2)


def test_bf16_softmax_runs_in_float32():
  s = jax.random.normal(jax.random.key(5), (4, 64)) * 30
  w = F.masked_softmax(s.astype(jnp.bfloat16), valid_lens=jnp.array([10, 20, 64, 1]))
  assert w.dtype == jnp.bfloat16
  ref = softmax_ref(np.asarray(s.astype(jnp.bfloat16).astype(jnp.float32)),
                    np.arange(64) < np.array([10, 20, 64, 1])[:, None])
  assert rel_err(w.astype(jnp.float32), ref) < 1e-2


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), q=st.integers(1, 5), k=st.integers(1, 7), seed=st.integers(0, 10**6),
       per_query=st.booleans())
def test_rows_sum_to_one_over_valid_keys(batch, q, k, seed, per_query):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(batch, q, k)).astype(np.float32) * 5
  lens = rng.integers(1, k + 1, size=(batch, q) if per_query else (batch,))
  w = np.asarray(F.masked_softmax(jnp.asarray(s), valid_lens=jnp.asarray(lens)))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  keep = np.arange(k) < (lens[..., None] if per_query else lens[:, None, None])
  assert np.all(w[~np.broadcast_to(keep, w.shape)] == 0.0)


def test_mask_helpers():
  np.testing.assert_array_equal(F.sequence_mask(jnp.array([1, 3]), 4),
                                [[1, 0, 0, 0], [1, 1, 1, 0]])
  ids = jnp.array([[5, 6, 0, 0], [7, 0, 0, 0]])
  pm = F.padding_mask(ids, pad_id=0)
  np.testing.assert_array_equal(pm, [[1, 1, 0, 0], [1, 0, 0, 0]])
  am = F.make_attention_mask(pm, pm)
  assert am.shape == (2, 4, 4) and bool(am[0, 1, 1]) and not bool(am[0, 2, 1])
  cm = F.causal_mask(3)
  np.testing.assert_array_equal(cm, np.tril(np.ones((3, 3), bool)))
  cm = F.causal_mask(2, 4, offset=2)  # last two queries of a 4-token sequence
  np.testing.assert_array_equal(cm, [[1, 1, 1, 0], [1, 1, 1, 1]])
  both = F.combine_masks(am, None, F.causal_mask(4))
  assert both.shape == (2, 4, 4) and not bool(both[0, 0, 1]) and bool(both[0, 1, 0])
  assert F.combine_masks(None, None) is None
  bias = F.mask_to_bias(both)
  np.testing.assert_array_equal(F.bias_to_mask(bias), both)
  assert F.bias_to_mask(F.mask_to_bias(both, jnp.bfloat16)).tolist() == both.tolist()
  # A bias from a mask gives the same softmax as the mask on rows with a valid key.
  s = jax.random.normal(jax.random.key(6), (2, 4, 4))
  np.testing.assert_allclose(F.masked_softmax(s, bias=bias)[0, :2],
                             F.masked_softmax(s, mask=both)[0, :2], atol=1e-7)


def test_bad_shapes_name_the_argument():
  with pytest.raises(F.ShapeError, match="'valid_lens'.*\\(3,\\)"):
    F.masked_softmax(SCORES, valid_lens=jnp.array([1, 2, 3]))
  with pytest.raises(F.ShapeError, match="'valid_lens'.*q_len=2"):
    F.masked_softmax(SCORES, valid_lens=jnp.ones((2, 3), int))
  with pytest.raises(F.ShapeError, match="'mask'"):
    F.masked_softmax(SCORES, mask=jnp.ones((3, 4), bool))
  with pytest.raises(F.ShapeError, match="'token_ids'"):
    F.padding_mask(jnp.ones((2, 3, 4), int))
