"""A plain CNN classifier: the baseline the STN experiment puts a SpatialTransformer in front of."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvNet(nn.Module):
  """[conv 3x3 -> ReLU -> conv 3x3 -> ReLU -> max-pool 2x2] per width, then MLP.

  Attributes: num_classes; features (channels per stage); hidden (MLP width); dropout;
  dtype (compute dtype, params float32).

  Call: `images: [batch, height, width, channels]` -> logits `[batch, num_classes]`.
  """
  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.astype(self.dtype)
    for f in self.features:
      x = nn.relu(nn.Conv(f, (3, 3), padding=1, dtype=self.dtype)(x))
      x = nn.relu(nn.Conv(f, (3, 3), padding=1, dtype=self.dtype)(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
