"""Plain float64 NumPy references that the tests compare the JAX code against."""
from __future__ import annotations

import numpy as np


def softmax_ref(scores: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
  """Row softmax in float64; blocked entries get 0, fully blocked rows are all 0."""
  s = np.asarray(scores, np.float64)
  keep = np.ones(s.shape, bool) if keep is None else np.broadcast_to(keep, s.shape)
  s = np.where(keep, s, -np.inf)
  m = np.max(s, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.where(keep, np.exp(s - m), 0.0)
  d = e.sum(-1, keepdims=True)
  return e / np.where(d > 0, d, 1.0)


def attention_ref(q, k, v, keep=None, bias=None, scale=None):
  """Scaled dot-product attention in float64. Shapes as attn_jax.functional.attention."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
  s = np.einsum("...qd,...kd->...qk", q, k) * scale
  if bias is not None:
    s = s + np.asarray(bias, np.float64)
  w = softmax_ref(s, keep)
  return np.einsum("...qk,...kd->...qd", w, v), w


def rel_err(x, ref) -> float:
  x = np.asarray(x, np.float64)
  ref = np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))
