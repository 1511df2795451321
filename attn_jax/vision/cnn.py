"""A plain CNN classifier: the baseline the STN experiment puts a SpatialTransformer in front of."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvNet(nn.Module):
  """[conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> max-pool 2x2] per width, then MLP.

  Attributes: num_classes; widths (channels per stage); mlp_dim (hidden width of the head);
  dropout_rate; dtype (compute dtype; logits float32); param_dtype.

  Call: `images: [batch, height, width, channels]` -> logits `[batch, num_classes]`.
  """
  num_classes: int
  widths: Sequence[int] = (32, 64)
  mlp_dim: int = 128
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """images: [batch, height, width, channels] -> logits [batch, num_classes] float32."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images
    for f in self.widths:
      x = nn.relu(nn.Conv(f, (3, 3), padding=1, **kw)(x))
      x = nn.relu(nn.Conv(f, (3, 3), padding=1, **kw)(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(self.mlp_dim, **kw)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, **kw)(x).astype(jnp.float32)
