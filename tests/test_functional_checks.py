"""Input checks of `attn_jax.functional`: dtypes, zero-size axes, head counts, parameter
shapes, and padded values that hold NaN (named errors, never silently wrong numbers)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from reference import attention_ref

IMPLS = ["reference", "blockwise", "xla", None]


def qkv(b=2, q=3, k=5, d=4, dtype=jnp.float32, seed=0):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.standard_normal(s), dtype) for s in
               ((b, q, d), (b, k, d), (b, k, d)))


@pytest.mark.parametrize("impl", IMPLS)
def test_integer_and_bool_inputs_are_rejected_by_name(impl):
  q, k, v = qkv()
  with pytest.raises(F.ShapeError, match=r"argument 'q' has dtype int32; expected a floating"):
    F.attention(q.astype(jnp.int32), k.astype(jnp.int32), v.astype(jnp.int32),
                implementation=impl)
  with pytest.raises(F.ShapeError, match=r"argument 'v' has dtype int32"):
    F.attention(q, k, v.astype(jnp.int32), implementation=impl)
  with pytest.raises(F.ShapeError, match=r"argument 'k' has dtype bool"):
    F.attention(q, k > 0, v, implementation=impl)


def test_masked_softmax_and_scorers_reject_integer_scores():
  with pytest.raises(F.ShapeError, match=r"masked_softmax\(\): argument 'scores' has dtype int32"):
    F.masked_softmax(jnp.arange(6).reshape(2, 3))
  q, k, _ = qkv()
  with pytest.raises(F.ShapeError, match=r"dot_product_scores\(\): argument 'q' has dtype int32"):
    F.dot_product_scores(q.astype(jnp.int32), k)


@pytest.mark.parametrize("impl", IMPLS)
def test_valid_lens_must_be_integer(impl):
  q, k, v = qkv()
  with pytest.raises(F.ShapeError, match=r"argument 'valid_lens' has dtype float32"):
    F.attention(q, k, v, valid_lens=jnp.array([2.0, 3.0]), implementation=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_in_padded_values_gives_the_output_of_zeros(impl):
  q, k, v = qkv()
  lens = jnp.array([2, 4])
  pad = np.arange(5)[None, :, None] >= np.asarray(lens)[:, None, None]
  v_nan = jnp.where(pad, jnp.nan, v)
  v_zero = jnp.where(pad, 0.0, v)
  out = F.attention(q, k, v_nan, valid_lens=lens, implementation=impl)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, F.attention(q, k, v_zero, valid_lens=lens,
                                              implementation=impl), rtol=1e-6, atol=1e-6)
  ref, _ = attention_ref(q, k, v_zero, keep=~pad[:, None, :, 0])
  np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
  # the same through a mask that blocks the keys for every query (broadcast over queries)
  mask = jnp.asarray(~pad[:, None, :, 0])
  out_m = F.attention(q, k, v_nan, mask=mask, implementation=impl)
  np.testing.assert_allclose(out_m, out, rtol=1e-6, atol=1e-6)


def test_nan_in_a_value_some_query_attends_still_propagates():
  q, k, v = qkv()
  out = F.attention(q, k, v.at[0, 0, 0].set(jnp.nan), valid_lens=jnp.array([2, 4]))
  assert np.isnan(np.asarray(out)[0]).any()       # not hidden: a real value is NaN


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sizes,name", [(dict(d=0), "q"), (dict(k=0), "k"), (dict(q=0), "q"),
                                        (dict(b=0), "q")])
def test_zero_size_axes_are_named_errors(impl, sizes, name):
  q, k, v = qkv(**sizes)
  with pytest.raises(F.ShapeError, match=rf"argument '{name}' has shape .*zero-size axis"):
    F.attention(q, k, v, implementation=impl)


def test_masked_softmax_zero_size_is_a_named_error():
  with pytest.raises(F.ShapeError, match=r"'scores' has shape \(2, 0\)"):
    F.masked_softmax(jnp.zeros((2, 0)))


def test_heads_and_parameter_shapes_are_named():
  p = F.init_multi_head_params(jax.random.key(0), 8, 2, 4)
  x = jnp.ones((2, 3, 8))
  for heads in (0, -1):
    with pytest.raises(F.ShapeError, match=r"'num_heads' must be a positive int"):
      F.multi_head_attention(p, x, x, heads)
  with pytest.raises(F.ShapeError, match=r"'num_heads' must be a positive int"):
    F.split_heads(x, 0)
  for name, bad in (("b_q", jnp.zeros(7)), ("b_k", jnp.zeros((1, 8))), ("b_v", jnp.zeros(9)),
                    ("b_o", jnp.zeros(3)), ("W_o", jnp.zeros(8))):
    with pytest.raises(F.ShapeError, match=rf"params\['{name}'\]"):
      F.multi_head_attention({**p, name: bad}, x, x, 2)
  with pytest.raises(KeyError, match="W_v"):
    F.multi_head_attention({n: w for n, w in p.items() if n != "W_v"}, x, x, 2)
  with pytest.raises(F.ShapeError, match=r"'x_q' has dtype int32"):
    F.multi_head_attention(p, x.astype(jnp.int32), x, 2)


def test_scale_must_be_positive():
  q, k, v = qkv()
  with pytest.raises(F.ShapeError, match=r"'scale' must be > 0"):
    F.attention(q, k, v, scale=0.0)
