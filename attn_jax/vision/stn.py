"""Spatial Transformer Networks (Jaderberg et al. 2015).

A localisation network predicts 6 affine parameters (initialised to the identity),
`F.affine_grid` turns them into a sampling grid and `F.grid_sample` resamples the
input bilinearly. At initialisation the layer returns its input exactly.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F
from attn_jax.functional import _checks as C

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class SpatialTransformer(nn.Module):
  """Learned affine warp of the input.

  Attributes:
    features: channels of the localisation convs (3x3 conv, ReLU, 2x2 max-pool each).
    hidden: width of the localisation MLP.
    out_size: (height, width) of the output; default the input size.

  Call: `images: [batch, height, width, channels]` -> `[batch, out_h, out_w, channels]`.
  The predicted `theta` [batch, 2, 3] is sown in 'intermediates'.
  """
  features: Sequence[int] = (8, 16)
  hidden: int = 32
  out_size: tuple[int, int] | None = None

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    C.check_rank("SpatialTransformer", "images", images, "[batch, height, width, channels]", rank=4)
    x = images
    for i, f in enumerate(self.features):
      x = nn.relu(nn.Conv(f, (3, 3), padding=1, name=f"loc_conv{i}")(x))
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(self.hidden, name="loc_fc")(x.reshape(x.shape[0], -1)))
    # zero weights + identity bias: the warp starts as the identity (as in the paper)
    theta = nn.Dense(6, kernel_init=nn.initializers.zeros_init(),
                     bias_init=lambda *_: jnp.asarray(_IDENTITY, jnp.float32),
                     name="loc_theta")(x).reshape(-1, 2, 3)
    self.sow("intermediates", "theta", theta)
    size = self.out_size or images.shape[1:3]
    return F.grid_sample(images, F.affine_grid(theta, size))


class STN(nn.Module):
  """A SpatialTransformer in front of any classifier of the project.

  Attributes:
    classifier: a module called as `classifier(images, train=train)` (ViT, Swin, ResNet, ...).
    features, hidden, out_size: as in SpatialTransformer.

  Call: `images: [batch, height, width, channels]` -> the classifier's logits.
  """
  classifier: nn.Module
  features: Sequence[int] = (8, 16)
  hidden: int = 32
  out_size: tuple[int, int] | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = SpatialTransformer(self.features, self.hidden, self.out_size, name="stn")(images)
    return self.classifier(x, train=train)


def stn_cnn(num_classes: int, features: Sequence[int] = (32, 64), hidden: int = 128,
            dropout: float = 0.0, stn_features: Sequence[int] = (8, 16), stn_hidden: int = 32,
            dtype=jnp.float32) -> STN:
  """`STN(classifier=ConvNet(...))`: the registry's 'stn_cnn' (same classifier as 'cnn')."""
  from attn_jax.vision.cnn import ConvNet
  return STN(ConvNet(num_classes, tuple(features), hidden, dropout, dtype),
             tuple(stn_features), stn_hidden)
