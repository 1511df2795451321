"""Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input token."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C


def attention_rollout(weights: Sequence[jax.Array], residual: float = 0.5) -> jax.Array:
  """Multiplies the layers' head-averaged attention, each mixed with the identity.

  Layer l's effective map is `A_l = residual * I + (1 - residual) * mean_heads(W_l)`
  (rows renormalised), accounting for the skip connection; the rollout is
  `A_L @ ... @ A_1`. Row i of the result says how much output token i draws on
  each input token (for ViT, row 0 is the class token: reshape its patch columns
  to the patch grid to see where the model looks).

  Args:
    weights: one array per layer, [batch, heads, tokens, tokens] (or [batch, tokens, tokens]).
    residual: weight of the identity (the skip connection), in [0, 1).

  Returns:
    [batch, tokens, tokens]; every row sums to 1.
  """
  fn = "attention_rollout"
  if not weights:
    raise ValueError(f"{fn}(): argument 'weights' is empty; pass one map per layer.")
  if not 0.0 <= residual < 1.0:
    raise ValueError(f"{fn}(): argument 'residual' must be in [0, 1), got {residual}.")
  first = weights[0]
  C.check_rank(fn, "weights[0]", first, "[batch, heads, tokens, tokens] or [batch, tokens, tokens]",
               min_rank=3)
  n = first.shape[-1]
  out = None
  for i, w in enumerate(weights):
    if w.shape[-2:] != (n, n) or w.shape[0] != first.shape[0]:
      C.fail(fn, f"weights[{i}]", w, f"[batch={first.shape[0]}, (heads,) {n}, {n}] like weights[0]")
    a = w.astype(jnp.float32)
    a = a.mean(axis=1) if a.ndim == 4 else a
    a = residual * jnp.eye(n) + (1.0 - residual) * a
    a = a / a.sum(-1, keepdims=True)
    out = a if out is None else a @ out
  return out
