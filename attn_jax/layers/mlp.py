"""The one MLP block of every model: Dense(mlp_dim) -> activation -> dropout -> Dense(out).

The Transformer's feed-forward sublayer and the ViT / Swin MLPs are this block; their
residual wrappers add the dropout after it. Parameter names `fc1` / `fc2` follow timm.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


class MlpBlock(nn.Module):
  """x: [..., d] -> [..., out_dim or d].

  Attributes:
    mlp_dim: hidden width.
    out_dim: output width (default: the input width).
    activation: 'gelu' (exact), 'gelu_tanh' or 'relu'.
    dropout_rate: dropout after the activation (when `train`).
    kernel_init: initialiser of both kernels (default: ViT's xavier uniform).
    bias_init: initialiser of both biases (default: N(0, 1e-6)).
    dtype: compute dtype (None: the input's).
    param_dtype: parameter dtype.
  """
  mlp_dim: int
  out_dim: int | None = None
  activation: str = "gelu"
  dropout_rate: float = 0.0
  kernel_init: Any = nn.initializers.xavier_uniform()
  bias_init: Any = nn.initializers.normal(1e-6)
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Applies fc1, the activation, dropout and fc2.

    Args:
      x: [..., d].
      train: enables dropout (the 'dropout' RNG stream).

    Returns:
      [..., out_dim or d].
    """
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"MlpBlock: activation must be one of {sorted(ACTIVATIONS)}, got "
                       f"{self.activation!r}.")
    dense = lambda n, name: nn.Dense(n, kernel_init=self.kernel_init, bias_init=self.bias_init,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    y = ACTIVATIONS[self.activation](dense(self.mlp_dim, "fc1")(x))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return dense(self.out_dim or x.shape[-1], "fc2")(y)
