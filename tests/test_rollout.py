"""Attention rollout against a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import functional as F


def test_rollout_matches_numpy_and_rows_sum_to_one():
  keys = jax.random.split(jax.random.key(0), 3)
  maps = [jax.nn.softmax(jax.random.normal(k, (2, 4, 5, 5)), -1) for k in keys]
  out = np.asarray(F.attention_rollout(maps, residual=0.5))
  ref = None
  for m in maps:
    a = 0.5 * np.eye(5) + 0.5 * np.asarray(m, np.float64).mean(1)
    a /= a.sum(-1, keepdims=True)
    ref = a if ref is None else a @ ref
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
  # No residual, one layer: just the head-averaged map.
  np.testing.assert_allclose(F.attention_rollout(maps[:1], residual=0.0), maps[0].mean(1), rtol=1e-5)


def test_rollout_errors():
  m = jnp.ones((2, 3, 4, 4)) / 4
  with pytest.raises(F.ShapeError, match=r"weights\[1\]"):
    F.attention_rollout([m, jnp.ones((2, 3, 5, 5))])
  with pytest.raises(ValueError, match="residual"):
    F.attention_rollout([m], residual=1.0)
  with pytest.raises(ValueError, match="empty"):
    F.attention_rollout([])
