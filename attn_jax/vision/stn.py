"""Spatial Transformer Networks (Jaderberg et al. 2015).

A localisation network predicts 6 affine parameters (initialised to the identity),
`F.affine_grid` turns them into a sampling grid and `F.grid_sample` resamples the
input bilinearly. At initialisation the layer returns its input exactly.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F
from attn_jax.functional import _checks as C

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class SpatialTransformer(nn.Module):
  """Learned affine warp of the input.

  Attributes:
    widths: channels of the localisation convs (3x3 conv, ReLU, 2x2 max-pool each).
    mlp_dim: hidden width of the localisation MLP.
    out_size: (height, width) of the output; default the input size.
    dtype: compute dtype of the localisation net (the sampling runs in float32).

  Call: `images: [batch, height, width, channels]` -> `[batch, out_h, out_w, channels]`.
  The predicted `theta` [batch, 2, 3] is sown in 'intermediates'.
  """
  widths: Sequence[int] = (8, 16)
  mlp_dim: int = 32
  out_size: tuple[int, int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """Warps images by the affine transform the localisation network predicts.

    Args:
      images: [batch, height, width, channels].

    Returns:
      [batch, out_height, out_width, channels] (`out_size`, default the input size);
      the predicted theta [batch, 2, 3] is sown as 'theta' in 'intermediates'.
    """
    C.check_rank("SpatialTransformer", "images", images, "[batch, height, width, channels]", rank=4)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images
    for i, f in enumerate(self.widths):
      x = nn.relu(nn.Conv(f, (3, 3), padding=1, name=f"loc_conv{i}", **kw)(x))
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(self.mlp_dim, name="loc_fc", **kw)(x.reshape(x.shape[0], -1)))
    # zero weights + identity bias: the warp starts as the identity (as in the paper)
    theta = nn.Dense(6, kernel_init=nn.initializers.zeros_init(),
                     bias_init=lambda *_: jnp.asarray(_IDENTITY, jnp.float32),
                     param_dtype=self.param_dtype, name="loc_theta")(x).reshape(-1, 2, 3)
    theta = theta.astype(jnp.float32)   # the warp is computed in float32
    self.sow("intermediates", "theta", theta)
    size = self.out_size or images.shape[1:3]
    return F.grid_sample(images, F.affine_grid(theta, size)).astype(images.dtype)


class STN(nn.Module):
  """A SpatialTransformer in front of any classifier of the project.

  Attributes:
    classifier: a module called as `classifier(images, train=train)` (ViT, Swin, ResNet, ...).
    widths: localisation conv channels, as in SpatialTransformer.
    mlp_dim: localisation MLP width.
    out_size: (height, width) of the warped images; default the input size.
    dtype: compute dtype of the localisation net.
    param_dtype: parameter dtype.

  Call: `images: [batch, height, width, channels]` -> the classifier's logits.
  """
  classifier: nn.Module
  widths: Sequence[int] = (8, 16)
  mlp_dim: int = 32
  out_size: tuple[int, int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Warps the images, then classifies them.

    Args:
      images: [batch, height, width, channels].
      train: passed to the classifier.

    Returns:
      [batch, num_classes] logits of the classifier.
    """
    x = SpatialTransformer(self.widths, self.mlp_dim, self.out_size, self.dtype,
                           self.param_dtype, name="stn")(images)
    return self.classifier(x, train=train)


def stn_cnn(num_classes: int, widths: Sequence[int] = (32, 64), mlp_dim: int = 128,
            dropout_rate: float = 0.0, stn_widths: Sequence[int] = (8, 16),
            stn_mlp_dim: int = 32, dtype: Any = None, param_dtype: Any = jnp.float32) -> STN:
  """`STN(classifier=ConvNet(...))`: the registry's 'stn_cnn' (same classifier as 'cnn')."""
  from attn_jax.vision.cnn import ConvNet
  return STN(ConvNet(num_classes, tuple(widths), mlp_dim, dropout_rate, dtype, param_dtype),
             tuple(stn_widths), stn_mlp_dim, dtype=dtype, param_dtype=param_dtype)
