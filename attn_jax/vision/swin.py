"""Swin Transformer (Liu et al. 2021): shifted-window attention with relative position bias.

Built from the pure window functions in `attn_jax.functional.windows` and
`attn_jax.layers.MultiHeadAttention` (its `bias=` takes the relative position bias,
its `mask=` the shifted-window and padding masks). Parameter layout follows the
official code, so the counts match: Swin-T 28,288,354 and Swin-S 49,606,258 at
224x224 with 1000 classes.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F
from attn_jax.functional import _checks as C
from attn_jax.layers import MultiHeadAttention
from attn_jax.vision.common import DropPath, MlpBlock

# name -> (embed_dim, depths, num_heads), from the paper (patch 4, window 7 at 224x224)
SWIN_SIZES = {
    "T": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "B": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "L": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def effective_window(height: int, width: int, window: int, shift: int) -> tuple[int, int]:
  """Official Swin rule: a map no larger than the window is one window, unshifted.

  Returns (window, shift) to use on a height x width map.
  """
  if min(height, width) <= window:
    return min(height, width), 0
  return window, shift


class WindowAttention(nn.Module):
  """Multi-head self-attention inside M x M windows with a learned relative position bias.

  x: [batch, num_windows, M * M, dim] -> same; mask: bool broadcastable to
  [batch, num_windows, heads, M * M, M * M] (True = attend).
  """
  num_heads: int
  window: int
  attention_dropout: float = 0.0
  sow_weights: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads))
    bias = F.relative_position_bias(table, self.window)      # [heads, M*M, M*M]
    return MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout,
                              sow_weights=self.sow_weights, dtype=self.dtype, name="attn")(
                                  x, mask=mask, bias=bias, deterministic=deterministic)


class SwinBlock(nn.Module):
  """(S)W-MSA block: x + WindowAttention(LN(x)), then x + MLP(LN(x)).

  x: [batch, height, width, dim] -> same. Maps not divisible by the window are
  zero-padded and the padding is masked out of the keys.
  """
  num_heads: int
  window: int
  shift: int = 0
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  sow_weights: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    C.check_rank("SwinBlock", "x", x, "[batch, height, width, dim]", rank=4)
    _, h, w, d = x.shape
    m, s = effective_window(h, w, self.window, self.shift)
    y = F.pad_to_window(nn.LayerNorm(dtype=self.dtype, name="norm1")(x), m)
    hp, wp = y.shape[1:3]
    mask = None
    if s > 0:
      mask = F.shifted_window_mask(hp, wp, m, s)                 # [nW, M*M, M*M]
      y = F.cyclic_shift(y, s)
    if (hp, wp) != (h, w):
      mask = F.combine_masks(mask, F.window_padding_mask(h, w, m, s))
    if mask is not None:
      mask = mask[:, None]                                       # [nW, 1 (heads), q, k]
    y = F.window_partition(y, m)                                 # [b, nW, M*M, d]
    y = WindowAttention(self.num_heads, m, self.attention_dropout, self.sow_weights, self.dtype,
                        name="window_attention")(y, mask, deterministic)
    y = F.window_reverse(y, m, hp, wp)
    if s > 0:
      y = F.reverse_cyclic_shift(y, s)
    y = nn.Dropout(self.dropout)(y[:, :h, :w], deterministic=deterministic)
    x = x + DropPath(self.drop_path)(y, deterministic)
    y = MlpBlock(int(d * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype, name="mlp")(
        nn.LayerNorm(dtype=self.dtype, name="norm2")(x), deterministic)
    return x + DropPath(self.drop_path)(y, deterministic)


class PatchMerging(nn.Module):
  """Concatenates each 2x2 neighbourhood, LayerNorm, then a bias-free Linear 4C -> 2C.

  x: [batch, height, width, C] -> [batch, ceil(height/2), ceil(width/2), 2C]
  (odd sizes are zero-padded).
  """
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction")(x)


class SwinTransformer(nn.Module):
  """Swin Transformer classifier.

  Attributes:
    num_classes: classifier outputs.
    patch_size: patch side in pixels (4 for ImageNet, 2 for 28x28 / 32x32 inputs).
    window_size: window side M in patches.
    embed_dim: width C of stage 1 (doubled by each patch merging).
    depths: blocks per stage (even and odd blocks alternate W-MSA and SW-MSA).
    num_heads: heads per stage.
    mlp_ratio: MLP width / block width.
    drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
    dropout, attention_dropout: dropout after layers / on the attention weights.
    sow_weights: sow the window attention weights in 'intermediates'.
    dtype: computation dtype (e.g. bfloat16); params stay float32, logits are float32.

  Call: `images: [batch, height, width, channels]` (any size; padded to the patch
  and window sizes), `train` enables dropout / stochastic depth (the 'dropout' RNG)
  -> logits `[batch, num_classes]`.
  """
  num_classes: int
  patch_size: int = 4
  window_size: int = 7
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.1
  dropout: float = 0.0
  attention_dropout: float = 0.0
  sow_weights: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    C.check_rank("SwinTransformer", "images", images, "[batch, height, width, channels]", rank=4)
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"SwinTransformer: depths {tuple(self.depths)} and num_heads "
                       f"{tuple(self.num_heads)} must have the same length.")
    p = self.patch_size
    x = F.pad_to_window(images, p)
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="patch_embed")(x)
    x = nn.LayerNorm(dtype=self.dtype, name="patch_norm")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    total = sum(self.depths)
    k = 0
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      for j in range(depth):
        rate = self.drop_path_rate * k / max(total - 1, 1)
        x = SwinBlock(heads, self.window_size, 0 if j % 2 == 0 else self.window_size // 2,
                      self.mlp_ratio, self.dropout, self.attention_dropout, rate,
                      self.sow_weights, self.dtype,
                      name=f"stage{i}_block{j}")(x, deterministic=not train)
        k += 1
      if i < len(self.depths) - 1:
        x = PatchMerging(self.dtype, name=f"merge{i}")(x)
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def swin_variant(name: str, num_classes: int, **overrides) -> SwinTransformer:
  """A named Swin: 'Swin-T', 'Swin-S', 'Swin-B', 'Swin-L' (patch 4, window 7).

  Small variants for 28x28 / 32x32 inputs: 'Swin-T/p2w4' etc. override patch and window
  ('p{patch}w{window}'). `**overrides` sets any other SwinTransformer attribute.
  """
  size, _, pw = name.removeprefix("Swin-").partition("/")
  if size not in SWIN_SIZES:
    raise ValueError(f"swin_variant(): unknown variant {name!r}; expected 'Swin-T', "
                     f"'Swin-S/p2w4', ... with a size in {sorted(SWIN_SIZES)}.")
  dim, depths, heads = SWIN_SIZES[size]
  kw = dict(embed_dim=dim, depths=depths, num_heads=heads)
  if pw:
    patch, _, window = pw.removeprefix("p").partition("w")
    if not (patch.isdigit() and window.isdigit()):
      raise ValueError(f"swin_variant(): bad suffix {pw!r} in {name!r}; expected 'p2w4'.")
    kw.update(patch_size=int(patch), window_size=int(window))
  kw.update(overrides)
  return SwinTransformer(num_classes, **kw)
