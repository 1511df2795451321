"""Swin Transformer (Liu et al. 2021): shifted-window attention with relative position bias.

Built from the pure window functions in `attn_jax.functional.windows` and
`attn_jax.layers.MultiHeadAttention` (its `bias=` takes the relative position bias,
its `mask=` the shifted-window and padding masks). Parameter layout follows the
official code, so the counts match: Swin-T 28,288,354 and Swin-S 49,606,258 at
224x224 with 1000 classes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F
from attn_jax.functional import _checks as C
from attn_jax.layers import MlpBlock, MultiHeadAttention, run_stack
from attn_jax.vision.common import drop_branch

# name -> (width, depth per stage, heads per stage), from the paper (patch 4, window 7 at 224)
SWIN_SIZES = {
    "T": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "S": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "B": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "L": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def effective_window(height: int, width: int, window: int, shift: int) -> tuple[int, int]:
  """Official Swin rule: a map no larger than the window is one window, unshifted.

  Args:
    height: feature map height in tokens.
    width: feature map width in tokens.
    window: the configured window side M.
    shift: the configured shift.

  Returns:
    (window, shift) to use on a height x width map.
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
  attention_dropout_rate: float = 0.0
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads), self.param_dtype)
    bias = F.relative_position_bias(table, self.window)      # [heads, M*M, M*M]
    return MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                              sow_weights=self.sow_weights, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="attn")(
                                  x, mask=mask, bias=bias, deterministic=not train)


class SwinBlock(nn.Module):
  """(S)W-MSA block: x + WindowAttention(LN(x)), then x + MLP(LN(x)).

  x: [batch, height, width, dim] -> same. Maps not divisible by the window are
  zero-padded and the padding is masked out of the keys. `norm_eps`: LayerNorm epsilon.
  """
  num_heads: int
  window: int
  shift: int = 0
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               drop_path_rate: float | jax.Array = 0.0) -> jax.Array:
    C.check_rank("SwinBlock", "x", x, "[batch, height, width, dim]", rank=4)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _, h, w, d = x.shape
    m, s = effective_window(h, w, self.window, self.shift)
    y = F.pad_to_window(nn.LayerNorm(self.norm_eps, name="norm1", **kw)(x), m)
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
    y = WindowAttention(self.num_heads, m, self.attention_dropout_rate, self.sow_weights,
                        name="window_attention", **kw)(y, mask, train)
    y = F.window_reverse(y, m, hp, wp)
    if s > 0:
      y = F.reverse_cyclic_shift(y, s)
    y = nn.Dropout(self.dropout_rate)(y[:, :h, :w], deterministic=not train)
    x = x + drop_branch(self, y, drop_path_rate, train)
    y = MlpBlock(int(d * self.mlp_ratio), dropout_rate=self.dropout_rate, name="mlp", **kw)(
        nn.LayerNorm(self.norm_eps, name="norm2", **kw)(x), train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + drop_branch(self, y, drop_path_rate, train)


class SwinBlockPair(SwinBlock):
  """A W-MSA block then an SW-MSA block (shift M/2): the unit `scan_layers` scans over.

  Same attributes as SwinBlock (its `shift` is ignored). x: [batch, height, width, dim] ->
  same; `drop_path_rate`: the two blocks' rates [2].
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, drop_path_rate=(0.0, 0.0)) -> jax.Array:
    attrs = {f.name: getattr(self, f.name) for f in dataclasses.fields(SwinBlock)
             if f.init and f.name not in ("parent", "name", "shift")}
    for j, shift in enumerate((0, self.window // 2)):
      x = SwinBlock(**attrs, shift=shift, name=f"block{j}")(x, train, drop_path_rate[j])
    return x


class PatchMerging(nn.Module):
  """Concatenates each 2x2 neighbourhood, LayerNorm, then a bias-free Linear 4C -> 2C.

  x: [batch, height, width, C] -> [batch, ceil(height/2), ceil(width/2), 2C]
  (odd sizes are zero-padded). The channel order of the concatenation is
  x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] (as in the official code and timm).
  """
  dtype: Any = None
  param_dtype: Any = jnp.float32
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.LayerNorm(self.norm_eps, name="norm", **kw)(x)
    return nn.Dense(2 * c, use_bias=False, name="reduction", **kw)(x)


class SwinTransformer(nn.Module):
  """Swin Transformer classifier.

  Attributes:
    num_classes: classifier outputs.
    patch_size: patch side in pixels (4 for ImageNet, 2 for 28x28 / 32x32 inputs).
    window_size: window side M in patches.
    width: channels C of stage 1 (doubled by each patch merging).
    depth: blocks per stage (even and odd blocks alternate W-MSA and SW-MSA).
    num_heads: heads per stage.
    mlp_ratio: MLP hidden width / block width (the widths differ per stage).
    drop_path_rate: stochastic depth, rising linearly over all blocks to this rate.
    dropout_rate: dropout after the attention and MLP layers.
    attention_dropout_rate: dropout on the attention weights.
    sow_weights: with 'intermediates' mutable, sow the window attention weights there.
    dtype: compute dtype (e.g. bfloat16); softmax statistics and logits stay float32.
    param_dtype: parameter dtype (float32).
    scan_layers: each stage runs its (W-MSA, SW-MSA) pairs as one `nn.scan` (every stage
      depth must be even; parameters under `stage<i>_pair_scan/block{0,1}` with a leading
      [depth / 2] axis instead of `stage<i>_block<j>`).
    remat: rematerialisation policy per block (pair): 'none' | 'full' | 'dots'.
    norm_eps: epsilon of every LayerNorm (1e-5 in the official code and timm).

  Call: `images: [batch, height, width, channels]` (any size; padded to the patch
  and window sizes), `train` enables dropout / stochastic depth (the 'dropout' RNG)
  -> logits `[batch, num_classes]` float32.
  """
  num_classes: int
  patch_size: int = 4
  window_size: int = 7
  width: int = 96
  depth: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.1
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: str = "none"
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Classifies images.

    Args:
      images: [batch, height, width, channels] float; a size that the windows do not
        divide is zero-padded and the padding masked out of the keys.
      train: enables dropout and stochastic depth (the 'dropout' RNG stream).

    Returns:
      [batch, num_classes] float32 logits.
    """
    C.check_rank("SwinTransformer", "images", images, "[batch, height, width, channels]", rank=4)
    if len(self.depth) != len(self.num_heads):
      raise ValueError(f"SwinTransformer: depth {tuple(self.depth)} and num_heads "
                       f"{tuple(self.num_heads)} must have the same length.")
    if self.scan_layers and any(n % 2 for n in self.depth):
      raise ValueError(f"SwinTransformer: scan_layers needs an even depth per stage, got "
                       f"{tuple(self.depth)}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    p = self.patch_size
    x = F.pad_to_window(images, p)
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="patch_embed", **kw)(x)
    x = nn.LayerNorm(self.norm_eps, name="patch_norm", **kw)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    total = sum(self.depth)
    first = 0
    for i, (depth, heads) in enumerate(zip(self.depth, self.num_heads)):
      rates = [self.drop_path_rate * (first + j) / max(total - 1, 1) for j in range(depth)]
      first += depth
      common = dict(mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
                    attention_dropout_rate=self.attention_dropout_rate,
                    sow_weights=self.sow_weights, norm_eps=self.norm_eps, **kw)
      if self.scan_layers:   # one scan over the stage's (W-MSA, SW-MSA) pairs
        make = lambda name, _, heads=heads: SwinBlockPair(heads, self.window_size, name=name,
                                                          **common)
        x = run_stack(make, x, depth=depth // 2, train=train, scan=True, remat=self.remat,
                      per_layer={"drop_path_rate": list(zip(rates[::2], rates[1::2]))},
                      name=f"stage{i}_pair")
      else:
        make = lambda name, j, heads=heads: SwinBlock(
            heads, self.window_size, 0 if j % 2 == 0 else self.window_size // 2, name=name,
            **common)
        x = run_stack(make, x, depth=depth, train=train, remat=self.remat,
                      per_layer={"drop_path_rate": rates}, name=f"stage{i}_block")
      if i < len(self.depth) - 1:
        x = PatchMerging(name=f"merge{i}", norm_eps=self.norm_eps, **kw)(x)
    x = nn.LayerNorm(self.norm_eps, name="norm", **kw)(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head", **kw)(x).astype(jnp.float32)


def swin_variant(name: str, num_classes: int, **overrides) -> SwinTransformer:
  """A named Swin: 'Swin-T', 'Swin-S', 'Swin-B', 'Swin-L' (patch 4, window 7).

  Small variants for 28x28 / 32x32 inputs: 'Swin-T/p2w4' etc. override patch and window
  ('p{patch}w{window}').

  Args:
    name: 'Swin-{T,S,B,L}' with an optional '/p{patch}w{window}' suffix.
    num_classes: classifier outputs.
    **overrides: any other SwinTransformer attribute (drop_path_rate, scan_layers, ...).

  Returns:
    The `SwinTransformer` module.
  """
  size, _, pw = name.removeprefix("Swin-").partition("/")
  if size not in SWIN_SIZES:
    raise ValueError(f"swin_variant(): unknown variant {name!r}; expected 'Swin-T', "
                     f"'Swin-S/p2w4', ... with a size in {sorted(SWIN_SIZES)}.")
  dim, depths, heads = SWIN_SIZES[size]
  kw = dict(width=dim, depth=depths, num_heads=heads)
  if pw:
    patch, _, window = pw.removeprefix("p").partition("w")
    if not (patch.isdigit() and window.isdigit()):
      raise ValueError(f"swin_variant(): bad suffix {pw!r} in {name!r}; expected 'p2w4'.")
    kw.update(patch_size=int(patch), window_size=int(window))
  kw.update(overrides)
  return SwinTransformer(num_classes, **kw)
