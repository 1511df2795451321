"""Fuzzing `F.attention`, `F.masked_softmax` and `F.multi_head_attention` over ranks, dtypes,
sizes (zero included), masks and lengths: each call raises `ShapeError` or returns a finite
result equal to the float64 reference. Padded values hold NaN: they must not matter."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attn_jax import functional as F
from reference import attention_ref, softmax_ref

FLOATS = {"float32": 2e-5, "bfloat16": 4e-2, "float16": 4e-3}
DTYPES = list(FLOATS) + ["int32", "bool"]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _array(rng, shape, dtype):
  x = rng.standard_normal(shape)
  if dtype == "bool":
    return jnp.asarray(x > 0)
  if dtype == "int32":
    return jnp.asarray(np.round(3 * x), jnp.int32)
  return jnp.asarray(x, dtype)


def _keep(rng, b, q, k, with_mask, lens_kind):
  """-> (mask or None, valid_lens or None, keep [b, 1, q, k] bool for the reference)."""
  keep = np.ones((b, 1, q, k), bool)
  mask = lens = None
  if with_mask:
    mask = rng.random((b, 1, q, k)) > 0.4
    keep &= mask
  if lens_kind == "int":
    lens = rng.integers(0, k + 1, size=(b,))
    keep &= (np.arange(k) < lens[:, None, None, None])
    lens = jnp.asarray(lens, jnp.int32)
  elif lens_kind == "float":
    lens = jnp.full((b,), float(k), jnp.float32)
  return (None if mask is None else jnp.asarray(mask)), lens, keep


def _check(fn, ref, tol, must_raise):
  if must_raise:
    with pytest.raises(F.ShapeError):
      fn()
    return
  out = np.asarray(fn(), np.float64)
  assert np.isfinite(out).all()
  err = np.abs(out - ref).max() if out.size else 0.0
  assert err <= tol * (1 + np.abs(ref).max(initial=0.0)), err


@SETTINGS
@given(data=st.data())
def test_attention_fuzz(data):
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
  b, h = data.draw(st.integers(0, 2)), data.draw(st.integers(1, 2))
  q_len, kv_len, d = (data.draw(st.integers(0, 4)) for _ in range(3))
  four_d = data.draw(st.booleans())
  dt_qk, dt_v = data.draw(st.sampled_from(DTYPES)), data.draw(st.sampled_from(DTYPES))
  impl = data.draw(st.sampled_from([None, "reference", "blockwise", "xla"]))
  with_mask = data.draw(st.booleans())
  lens_kind = data.draw(st.sampled_from(["none", "int", "float"]))
  lead = (b, h) if four_d else (b,)
  q = _array(rng, lead + (q_len, d), dt_qk)
  k = _array(rng, lead + (kv_len, d), dt_qk)
  v_np = rng.standard_normal(lead + (kv_len, 3))
  mask, lens, keep = _keep(rng, b, q_len, kv_len, with_mask, lens_kind)
  if not four_d and mask is not None:
    mask, keep = mask[:, 0], keep[:, 0]
  key_used = keep.any(axis=-2, keepdims=True).swapaxes(-1, -2)         # [b, (1,) k, 1]
  v_nan = np.where(key_used, v_np, np.nan)       # a NaN at every key no query may attend
  v = _array(rng, v_np.shape, dt_v) if dt_v in ("int32", "bool") else jnp.asarray(v_nan, dt_v)
  must_raise = (0 in (b, q_len, kv_len, d) or dt_qk not in FLOATS or dt_v not in FLOATS
                or lens_kind == "float")
  ref = None
  if not must_raise:
    qf, kf = (np.asarray(x, np.float64) for x in (q, k))
    vf = np.where(key_used, np.asarray(jnp.asarray(v_np, dt_v), np.float64), 0.0)
    ref, _ = attention_ref(qf, kf, vf, keep=keep if four_d or with_mask else keep[:, 0])
  tol = max(FLOATS.get(dt_qk, 0), FLOATS.get(dt_v, 0)) * (1 + d)
  _check(lambda: F.attention(q, k, v, mask=mask, valid_lens=lens, implementation=impl),
         ref, tol, must_raise)


@SETTINGS
@given(data=st.data())
def test_masked_softmax_fuzz(data):
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
  rank = data.draw(st.integers(1, 4))
  shape = tuple(data.draw(st.integers(0, 3)) for _ in range(rank))
  dtype = data.draw(st.sampled_from(DTYPES))
  scores = _array(rng, shape, dtype)
  mask = None
  if data.draw(st.booleans()):
    mask = jnp.asarray(rng.random(shape) > 0.3)
  lens = None
  if rank >= 2 and data.draw(st.booleans()):
    lens = jnp.asarray(rng.integers(0, shape[-1] + 1, size=shape[:1]), jnp.int32)
  must_raise = 0 in shape or dtype not in FLOATS
  ref = None
  if not must_raise:
    keep = np.ones(shape, bool) if mask is None else np.asarray(mask)
    if lens is not None:
      keep = keep & (np.arange(shape[-1]) < np.asarray(lens).reshape((-1,) + (1,) * (rank - 1)))
    ref = softmax_ref(np.asarray(scores, np.float64), keep)
  _check(lambda: F.masked_softmax(scores, valid_lens=lens, mask=mask), ref,
         FLOATS.get(dtype, 0) * 4, must_raise)


@SETTINGS
@given(data=st.data())
def test_multi_head_attention_fuzz(data):
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
  b, q_len, kv_len = (data.draw(st.integers(0, 3)) for _ in range(3))
  heads = data.draw(st.integers(-1, 3))
  head_dim = data.draw(st.integers(1, 3))
  d_in = data.draw(st.integers(0, 4))
  dtype = data.draw(st.sampled_from(["float32", "float32", "int32"]))
  bad_bias = data.draw(st.sampled_from([None, "b_q", "b_o"]))
  import jax
  params = F.init_multi_head_params(jax.random.key(0), max(d_in, 1), max(heads, 1), head_dim)
  if d_in == 0:
    params = {n: (w[:0] if n.startswith("W_") and n != "W_o" else w) for n, w in params.items()}
  if bad_bias:
    params[bad_bias] = params[bad_bias][:-1]
  x_q = _array(rng, (b, q_len, d_in), dtype)
  x_kv = _array(rng, (b, kv_len, d_in), dtype)
  lens = jnp.asarray(rng.integers(0, kv_len + 1, size=(b,)), jnp.int32)
  must_raise = (0 in (b, q_len, kv_len, d_in) or heads < 1 or dtype != "float32"
                or bad_bias is not None)
  ref = None
  if not must_raise:
    p = {n: np.asarray(w, np.float64) for n, w in params.items()}
    xq, xk = np.asarray(x_q, np.float64), np.asarray(x_kv, np.float64)

    def split(x):
      return x.reshape(x.shape[:-1] + (heads, -1)).swapaxes(-2, -3)
    qh, kh, vh = (split(x @ p[f"W_{n}"] + p[f"b_{n}"]) for n, x in
                  (("q", xq), ("k", xk), ("v", xk)))
    keep = (np.arange(kv_len) < np.asarray(lens)[:, None, None, None])
    o, _ = attention_ref(qh, kh, vh, keep=keep)
    o = o.swapaxes(-2, -3).reshape(b, q_len, -1)
    ref = o @ p["W_o"] + p["b_o"]
  _check(lambda: F.multi_head_attention(params, x_q, x_kv, heads, valid_lens=lens), ref,
         1e-4, must_raise)
  if bad_bias and 0 not in (b, q_len, kv_len, d_in) and heads >= 1 and dtype == "float32":
    with pytest.raises(F.ShapeError, match=bad_bias):   # the parameter at fault is named
      F.multi_head_attention(params, x_q, x_kv, heads, valid_lens=lens)
