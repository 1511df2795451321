"""Flax linen layers built from `attn_jax.functional`."""
from attn_jax.layers.attention import AdditiveAttention, MultiHeadAttention

__all__ = ["AdditiveAttention", "MultiHeadAttention"]
