"""attn_jax: attention in JAX, from pure functions to trained models.

- `attn_jax.functional` (as `F`): pure jnp attention functions, no Flax.
- `attn_jax.layers`: Flax attention layers, the MLP block and layer stacks.
- `attn_jax.seq`: sequence models (Seq2Seq, Transformer, decoding).
- `attn_jax.vision`: vision models (ViT, Swin, SE/ECA/CBAM, STN).
- `attn_jax.train`, `attn_jax.data`, `attn_jax.analysis`: the runner, its data, and
  evaluation / figures (imported on use).
"""
from attn_jax import functional, layers, seq, vision
from attn_jax.layers import AdditiveAttention, LuongAttention, MlpBlock, MultiHeadAttention
from attn_jax.seq import Seq2Seq, Transformer, beam_search, greedy_decode
from attn_jax.vision import (STN, ResNet, SwinTransformer, ViT, resnet_variant, swin_variant,
                             vit_variant)

__version__ = "0.1.0"
__all__ = ["AdditiveAttention", "LuongAttention", "MlpBlock", "MultiHeadAttention", "ResNet",
           "STN", "Seq2Seq", "SwinTransformer", "Transformer", "ViT", "__version__",
           "beam_search", "functional", "greedy_decode", "layers", "resnet_variant", "seq",
           "swin_variant", "vision", "vit_variant"]
