"""Flax linen layers built from `attn_jax.functional`: attention, the MLP block, layer stacks."""
from attn_jax.layers.attention import AdditiveAttention, LuongAttention, MultiHeadAttention
from attn_jax.layers.mlp import ACTIVATIONS, MlpBlock
from attn_jax.layers.stack import REMAT_POLICIES, run_stack, stack_params, unstack_params

__all__ = ["ACTIVATIONS", "AdditiveAttention", "LuongAttention", "MlpBlock", "MultiHeadAttention",
           "REMAT_POLICIES", "run_stack", "stack_params", "unstack_params"]
