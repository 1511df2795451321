"""Flax linen layers built from `attn_jax.functional`."""
from attn_jax.layers.attention import AdditiveAttention, LuongAttention, MultiHeadAttention

__all__ = ["AdditiveAttention", "LuongAttention", "MultiHeadAttention"]
