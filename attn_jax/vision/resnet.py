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

  x: [batch, height, width, C_in] -> [batch, height/stride, width/stride, width].
  The attention (SE/ECA/CBAM) rescales the residual branch before the addition, as in
  the SE and CBAM papers.
  """
  width: int
  strides: int = 1
  attention: str = "none"
  reduction: int = 16
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: [batch, height, width, channels] -> [batch, height / stride, width / stride, width]."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name,
                                     **kw)
    conv = lambda k, strides, name: nn.Conv(self.width, (k, k), strides, padding=k // 2,
                                            use_bias=False, name=name, **kw)
    s = (self.strides, self.strides)
    y = nn.relu(norm("bn1")(conv(3, s, "conv1")(x)))
    y = norm("bn2")(conv(3, 1, "conv2")(y))
    att = channel_attention(self.attention, self.reduction, self.dtype, self.param_dtype)
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
    depth: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18; stage i has
      width * 2**i channels and (after the first) halves the resolution.
    width: channels of the first stage.
    attention: 'none', 'se', 'eca' or 'cbam'.
    reduction: MLP reduction ratio of SE / CBAM.
    small_inputs: 3x3 stride-1 stem without max-pool (CIFAR-style); False gives the
      ImageNet stem (7x7 stride 2 + 3x3 max-pool).
    dtype: compute dtype (e.g. bfloat16); logits stay float32.
    param_dtype: parameter dtype (float32).

  Call: `images: [batch, height, width, channels]`, `train` uses batch statistics and
  updates 'batch_stats' (apply with `mutable=['batch_stats']`) -> logits `[batch, num_classes]`.
  """
  num_classes: int
  depth: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  attention: str = "none"
  reduction: int = 16
  small_inputs: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Classifies images.

    Args:
      images: [batch, height, width, channels] float.
      train: BatchNorm uses (and, with `mutable=['batch_stats']`, updates) batch statistics.

    Returns:
      [batch, num_classes] float32 logits.
    """
    C.check_rank("ResNet", "images", images, "[batch, height, width, channels]", rank=4)
    k, s = (3, 1) if self.small_inputs else (7, 2)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.width, (k, k), s, padding=k // 2, use_bias=False, name="stem", **kw)(images)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn",
                             **kw)(x))
    if not self.small_inputs:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, n in enumerate(self.depth):
      for j in range(n):
        x = BasicBlock(self.width * 2 ** i, 2 if i > 0 and j == 0 else 1, self.attention,
                       self.reduction, name=f"stage{i}_block{j}", **kw)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head", **kw)(x).astype(jnp.float32)


# name -> (depth per stage, width); ResNet-20 is the CIFAR model (3 stages, 16 channels)
RESNET_SIZES = {
    "ResNet-18": ((2, 2, 2, 2), 64),
    "ResNet-34": ((3, 4, 6, 3), 64),
    "ResNet-20": ((3, 3, 3), 16),
}


def resnet_variant(name: str, num_classes: int, **overrides) -> ResNet:
  """A named ResNet.

  Args:
    name: 'ResNet-18', 'ResNet-34' or 'ResNet-20'.
    num_classes: classifier outputs.
    **overrides: any other ResNet attribute (attention='cbam', small_inputs=False, ...).

  Returns:
    The `ResNet` module.
  """
  if name not in RESNET_SIZES:
    raise ValueError(f"resnet_variant(): unknown variant {name!r}; expected one of "
                     f"{sorted(RESNET_SIZES)}.")
  depth, width = RESNET_SIZES[name]
  return ResNet(num_classes, **{"depth": depth, "width": width, **overrides})
