"""Multi-head attention and position encodings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F
from reference import attention_ref, rel_err


def test_split_merge_roundtrip():
  x = jax.random.normal(jax.random.key(0), (2, 5, 12))
  h = F.split_heads(x, 3)
  assert h.shape == (2, 3, 5, 4)
  np.testing.assert_array_equal(h[:, 1], x[..., 4:8])
  np.testing.assert_array_equal(F.merge_heads(h), x)
  with pytest.raises(F.ShapeError, match="'x'.*num_heads=5"):
    F.split_heads(x, 5)


def test_multi_head_matches_float64_reference_with_distinct_dims():
  ks = jax.random.split(jax.random.key(1), 4)
  xq = jax.random.normal(ks[0], (2, 5, 12))
  xk = jax.random.normal(ks[1], (2, 7, 10))
  xv = jax.random.normal(ks[2], (2, 7, 6))
  p = F.init_multi_head_params(ks[3], 12, num_heads=4, head_dim=3, d_k=10, d_v=6, v_head_dim=5,
                               d_out=9)
  p = jax.tree.map(lambda a: a + 0.1, p)  # non-zero biases
  lens = jnp.array([4, 7])
  out, w = F.multi_head_attention(p, xq, xk, 4, x_v=xv, valid_lens=lens, return_weights=True)
  assert out.shape == (2, 5, 9) and w.shape == (2, 4, 5, 7)
  n = {k: np.float64(a) for k, a in p.items()}
  split = lambda x, d: x.reshape(x.shape[:-1] + (4, d)).transpose(0, 2, 1, 3)
  q = split(np.float64(xq) @ n["W_q"] + n["b_q"], 3)
  k = split(np.float64(xk) @ n["W_k"] + n["b_k"], 3)
  v = split(np.float64(xv) @ n["W_v"] + n["b_v"], 5)
  o, ref_w = attention_ref(q, k, v, keep=np.arange(7) < np.asarray(lens)[:, None, None, None])
  ref = o.transpose(0, 2, 1, 3).reshape(2, 5, 20) @ n["W_o"] + n["b_o"]
  assert rel_err(out, ref) < 1e-5
  assert rel_err(w, ref_w) < 1e-5


def test_multi_head_errors():
  p = F.init_multi_head_params(jax.random.key(0), 8, 2, 4)
  x = jnp.ones((2, 3, 8))
  with pytest.raises(F.ShapeError, match="params\\['W_q'\\]"):
    F.multi_head_attention(p, jnp.ones((2, 3, 6)), x, 2)
  with pytest.raises(F.ShapeError, match="num_heads=3"):
    F.multi_head_attention(p, x, x, 3)
  with pytest.raises(KeyError, match="W_o"):
    F.multi_head_attention({k: v for k, v in p.items() if k != "W_o"}, x, x, 2)


def test_sinusoidal_positions():
  p = np.asarray(F.sinusoidal_positions(50, 16))
  pos, i = 7, 3
  assert abs(p[pos, 2 * i] - np.sin(pos / 10000 ** (2 * i / 16))) < 1e-6
  assert abs(p[pos, 2 * i + 1] - np.cos(pos / 10000 ** (2 * i / 16))) < 1e-6
  with pytest.raises(ValueError, match="'dim'"):
    F.sinusoidal_positions(5, 7)


def test_sincos_2d_positions():
  p = np.asarray(F.sincos_2d_positions(4, 6, 32))
  assert p.shape == (24, 32)
  # Tokens in the same column share the x half; in the same row the y half.
  np.testing.assert_allclose(p[0, :16], p[6, :16])
  np.testing.assert_allclose(p[0, 16:], p[1, 16:])
  assert len({tuple(r) for r in p.round(5)}) == 24


def test_rotary_scores_depend_on_relative_position_only():
  ks = jax.random.split(jax.random.key(2))
  q = jax.random.normal(ks[0], (1, 16))
  k = jax.random.normal(ks[1], (1, 16))
  def score(m, n):
    return float((F.apply_rotary(q, jnp.array([m])) @ F.apply_rotary(k, jnp.array([n])).T)[0, 0])
  assert abs(score(3, 1) - score(10, 8)) < 1e-4
  assert abs(score(3, 1) - score(3, 2)) > 1e-3
  x = jax.random.normal(ks[0], (2, 4, 8, 16))
  np.testing.assert_allclose(jnp.linalg.norm(F.apply_rotary(x), axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_grouped_kv_heads_and_variants_equal_repeated_heads():
  """GQA (2 K/V heads for 4 query heads) with a window, segment ids, softcap and ALiBi equals
  MHA whose W_k / W_v repeat each K/V head for its query heads; unknown variants fail."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import pytest
  from attn_jax import functional as F
  heads, kv, hd, d, n = 4, 2, 8, 16, 12
  p = F.init_multi_head_params(jax.random.key(0), d, heads, hd, num_kv_heads=kv)
  assert p["W_k"].shape == (d, kv * hd) and p["b_v"].shape == (kv * hd,)
  p = {k: v + 0.1 * jax.random.normal(jax.random.key(i), v.shape) for i, (k, v) in
       enumerate(p.items())}
  rep = lambda w: jnp.repeat(w.reshape(w.shape[:-1] + (kv, hd)), heads // kv, axis=-2).reshape(
      w.shape[:-1] + (heads * hd,))
  full = dict(p, **{k: rep(p[k]) for k in ("W_k", "b_k", "W_v", "b_v")})
  x = jax.random.normal(jax.random.key(9), (2, n, d))
  seg = jnp.asarray([[0] * 5 + [1] * 7, [0] * 12])
  kw = dict(is_causal=True, window=(4, 0), q_segment_ids=seg, softcap=5.0,
            alibi_slopes=F.alibi_slopes(heads))
  got = F.multi_head_attention(p, x, x, heads, num_kv_heads=kv, **kw)
  want = F.multi_head_attention(full, x, x, heads, implementation="reference", **kw)
  np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(TypeError, match="windows"):
    F.multi_head_attention(p, x, x, heads, num_kv_heads=kv, windows=3)
  with pytest.raises(F.ShapeError, match="num_kv_heads"):
    F.multi_head_attention(p, x, x, heads, num_kv_heads=3)
  with pytest.raises(F.ShapeError, match="W_k"):
    F.multi_head_attention(p, x, x, heads)   # W_k holds 2 heads, not 4
