"""A small ResNet whose residual blocks take a channel/spatial attention kind as config."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C
from attn_jax.vision.channel import channel_attention


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN -> attention -> + shortcut -> ReLU (He et al. 2016).

  x: [batch, height, width, C_in] -> [batch, height/stride, width/stride, features].
  The attention (SE/ECA/CBAM) rescales the residual branch before the addition, as in
  the SE and CBAM papers.
  """
  features: int
  strides: int = 1
  attention: str = "none"
  reduction: int = 16
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     dtype=self.dtype, name=name)
    conv = lambda k, strides, name: nn.Conv(self.features, (k, k), strides, padding=k // 2,
                                            use_bias=False, dtype=self.dtype, name=name)
    s = (self.strides, self.strides)
    y = nn.relu(norm("bn1")(conv(3, s, "conv1")(x)))
    y = norm("bn2")(conv(3, 1, "conv2")(y))
    att = channel_attention(self.attention, self.reduction, self.dtype)
    if att is not None:
      y = att(y)
    if x.shape != y.shape:
      x = conv(1, s, "proj")(x)
      x = norm("proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet classifier with optional SE / ECA / CBAM attention in every block.

  Attributes:
    num_classes: classifier outputs.
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18; stage i has
      width * 2**i channels and (after the first) halves the resolution.
    width: channels of the first stage.
    attention: 'none', 'se', 'eca' or 'cbam'.
    reduction: MLP reduction ratio of SE / CBAM.
    small_inputs: 3x3 stride-1 stem without max-pool (CIFAR-style); False gives the
      ImageNet stem (7x7 stride 2 + 3x3 max-pool).
    dtype: computation dtype (e.g. bfloat16); params stay float32, logits are float32.

  Call: `images: [batch, height, width, channels]`, `train` uses batch statistics and
  updates 'batch_stats' (apply with `mutable=['batch_stats']`) -> logits `[batch, num_classes]`.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  attention: str = "none"
  reduction: int = 16
  small_inputs: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    C.check_rank("ResNet", "images", images, "[batch, height, width, channels]", rank=4)
    k, s = (3, 1) if self.small_inputs else (7, 2)
    x = nn.Conv(self.width, (k, k), s, padding=k // 2, use_bias=False, dtype=self.dtype,
                name="stem")(images)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             name="stem_bn")(x))
    if not self.small_inputs:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = BasicBlock(self.width * 2 ** i, 2 if i > 0 and j == 0 else 1, self.attention,
                       self.reduction, self.dtype, name=f"stage{i}_block{j}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
