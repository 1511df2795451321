"""Vision Transformer (Dosovitskiy et al. 2021), big_vision / timm layout.

Patch embedding by a strided convolution, class token or global average pooling,
learned or sin-cos 2-D position embeddings, pre-LN encoder blocks built on
`attn_jax.layers.MultiHeadAttention`, final LayerNorm, linear head. With
`scan_layers` the blocks are one `nn.scan` (parameters under `block_scan` with a leading
[depth] axis; `attn_jax.layers.stack_params` / `unstack_params` convert checkpoints).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F
from attn_jax.functional import _checks as C
from attn_jax.layers import MlpBlock, MultiHeadAttention, run_stack
from attn_jax.vision.common import drop_branch

# name -> (width, depth, num_heads, mlp_dim), as in the ViT and DeiT papers
VIT_SIZES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x)).

  x: [batch, tokens, width] -> same. With 'intermediates' mutable (and `sow_weights`) the
  attention weights [batch, heads, tokens, tokens] are sown there; otherwise the attention
  runs on `F.attention`'s fast path.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  mlp_activation: str = "gelu"
  num_kv_heads: int | None = None
  softcap: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               drop_path_rate: float | jax.Array = 0.0) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.LayerNorm(name="norm1", **kw)(x)
    y = MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                           sow_weights=self.sow_weights, num_kv_heads=self.num_kv_heads,
                           softcap=self.softcap, name="attn", **kw)(
                               y, deterministic=not train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    x = x + drop_branch(self, y, drop_path_rate, train)
    y = nn.LayerNorm(name="norm2", **kw)(x)
    y = MlpBlock(self.mlp_dim, activation=self.mlp_activation, dropout_rate=self.dropout_rate,
                 name="mlp", **kw)(y, train)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + drop_branch(self, y, drop_path_rate, train)


class ViT(nn.Module):
  """Vision Transformer classifier.

  Attributes:
    num_classes: classifier outputs.
    patch_size: patch side p in pixels (the embedding is a p x p convolution with stride p).
    width: token width.
    depth: number of blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    pool: 'cls' (class token) or 'gap' (mean over patch tokens).
    posemb: 'learned' (resampled bilinearly when the patch grid differs from the one
      the table was made for) or 'sincos2d' (fixed, computed for any grid).
    dropout_rate: dropout after the embedding, attention output and MLP layers.
    attention_dropout_rate: dropout on the attention weights (> 0 takes the reference
      attention path: the fast kernels have no dropout).
    drop_path_rate: stochastic depth, rising linearly to this rate in the last block.
    posemb_grid: (rows, cols) grid of the learned table; default the grid of the
      input seen at `init`. At apply time a table whose grid is not given is taken
      to be square.
    sow_weights: with 'intermediates' mutable, sow each block's attention weights there.
    dtype: compute dtype (e.g. bfloat16); softmax statistics and logits stay float32.
    param_dtype: parameter dtype (float32).
    scan_layers: run the blocks as one `nn.scan` (see the module docstring).
    remat: rematerialisation policy of each block: 'none' | 'full' | 'dots'.
    mlp_activation: the MLP's 'gelu' (exact, timm) or 'gelu_tanh' (big_vision, the original
      ViT code).
    representation_size: width of a pre-logits layer (Dense + tanh) before the head, as in
      the original ViT's ImageNet-21k models; None: no such layer.
    fc_norm: apply the final LayerNorm (`fc_norm`) to the pooled features instead of
      to every token before pooling (`encoder_norm`), as timm's GAP models do.
    num_kv_heads: key/value heads of every attention layer (grouped-query attention;
      None = num_heads).
    softcap: attention-logit soft-cap (None = off).

  Call: `images: [batch, height, width, channels]` (height, width divisible by p),
  `train` enables dropout (needs a 'dropout' RNG) -> logits `[batch, num_classes]` float32.
  """
  num_classes: int
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = "cls"
  posemb: str = "learned"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  posemb_grid: tuple[int, int] | None = None
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: str = "none"
  mlp_activation: str = "gelu"
  representation_size: int | None = None
  fc_norm: bool = False
  num_kv_heads: int | None = None
  softcap: float | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Classifies images.

    Args:
      images: [batch, height, width, channels] float; height and width divisible by
        `patch_size` (another grid than `posemb_grid` resamples the learned table).
      train: enables dropout and stochastic depth (the 'dropout' RNG stream).

    Returns:
      [batch, num_classes] float32 logits. With 'intermediates' mutable, every block sows
      its attention weights [batch, heads, tokens, tokens] under
      `block{i}/attn/attention_weights`.
    """
    C.check_rank("ViT", "images", images, "[batch, height, width, channels]", rank=4)
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      C.fail("ViT", "images", images, f"[batch, height, width, channels] with height and "
             f"width divisible by patch_size={p}")
    if self.pool not in ("cls", "gap") or self.posemb not in ("learned", "sincos2d"):
      raise ValueError(f"ViT: pool must be 'cls'|'gap' and posemb 'learned'|'sincos2d', got "
                       f"{self.pool!r}, {self.posemb!r}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="embedding", **kw)(
        images)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    n_extra = 1 if self.pool == "cls" else 0
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, d), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
    x = x + self._position_embeddings(gh, gw, d, n_extra).astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    rates = [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
    make = lambda name, _: EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                                        self.attention_dropout_rate, self.sow_weights,
                                        mlp_activation=self.mlp_activation,
                                        num_kv_heads=self.num_kv_heads, softcap=self.softcap,
                                        name=name, **kw)
    x = run_stack(make, x, depth=self.depth, train=train,
                  per_layer={"drop_path_rate": rates} if self.drop_path_rate else None,
                  scan=self.scan_layers, remat=self.remat, name="block")
    if not self.fc_norm:
      x = nn.LayerNorm(name="encoder_norm", **kw)(x)
    x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    if self.fc_norm:
      x = nn.LayerNorm(name="fc_norm", **kw)(x)
    if self.representation_size:
      x = jnp.tanh(nn.Dense(self.representation_size, name="pre_logits", **kw)(x))
    x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros_init(), name="head",
                 **kw)(x)
    return x.astype(jnp.float32)

  def _position_embeddings(self, gh: int, gw: int, d: int, n_extra: int) -> jax.Array:
    """[1, n_extra + gh * gw, d] embeddings for a gh x gw patch grid."""
    if self.posemb == "sincos2d":
      pe = F.sincos_2d_positions(gh, gw, d)[None]
      return jnp.concatenate([jnp.zeros((1, n_extra, d), pe.dtype), pe], axis=1)
    grid = tuple(self.posemb_grid or (gh, gw))
    if self.has_variable("params", "pos_embedding"):
      # read, not `self.param`: the table keeps the grid it was made for even when the
      # input grid (which `self.param` would check its shape against) differs
      pe = self.get_variable("params", "pos_embedding")
    else:
      pe = self.param("pos_embedding", nn.initializers.normal(0.02),
                      (1, n_extra + grid[0] * grid[1], d), self.param_dtype)
    n_table = pe.shape[1] - n_extra
    if self.posemb_grid is None and n_table != gh * gw:
      side = math.isqrt(n_table)
      if side * side != n_table:
        raise ValueError(f"ViT: cannot infer the grid of a {n_table}-token position table; "
                         "set posemb_grid.")
      grid = (side, side)
    grid_part = F.resample_grid_embeddings(pe[:, n_extra:], (gh, gw), old_grid=grid)
    return jnp.concatenate([pe[:, :n_extra], grid_part], axis=1)


def vit_variant(name: str, num_classes: int, image_size: int | tuple[int, int] | None = None,
                **overrides) -> ViT:
  """A named ViT, e.g. `vit_variant('ViT-B/16', 1000)` or `vit_variant('ViT-S/4', 10, 32)`.

  Args:
    name: 'ViT-{Ti,S,B,L,H}/{patch}' (the 'ViT-' prefix is optional).
    num_classes: classifier outputs.
    image_size: training resolution; fixes `posemb_grid` for the learned table.
    **overrides: any other ViT attribute (pool, posemb, dropout_rate, ...).

  Returns:
    The `ViT` module (call it on images [batch, height, width, channels]).
  """
  size, _, patch = name.removeprefix("ViT-").partition("/")
  if size not in VIT_SIZES or not patch.isdigit():
    raise ValueError(f"vit_variant(): unknown variant {name!r}; expected e.g. 'ViT-S/16' with "
                     f"a size in {sorted(VIT_SIZES)}.")
  width, depth, heads, mlp = VIT_SIZES[size]
  p = int(patch)
  kw = dict(patch_size=p, width=width, depth=depth, num_heads=heads, mlp_dim=mlp)
  if image_size is not None:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    kw["posemb_grid"] = (hw[0] // p, hw[1] // p)
  kw.update(overrides)
  return ViT(num_classes, **kw)
