"""Pure attention functions: `from attn_jax import functional as F`.

No Flax, no state. Layout: `q: [..., q_len, d_k]`, `k: [..., kv_len, d_k]`,
`v: [..., kv_len, d_v]`; leading axes (batch, heads) broadcast, and k/v may have fewer
heads on axis -3 than q (grouped-query attention). Boolean masks are
True where attention is allowed. Every function checks its inputs and raises
`ShapeError` naming the argument, its shape and the shape it needed.
"""
from attn_jax.functional._checks import ShapeError
from attn_jax.functional.core import (IMPLEMENTATIONS, attention, attention_pool, dropout,
                                           nadaraya_watson, projected_self_attention,
                                           simple_self_attention)
from attn_jax.functional.masks import (NEG_INF, bias_to_mask, causal_mask, combine_masks,
                                       make_attention_mask, mask_to_bias, masked_softmax,
                                       padding_mask, segment_mask, sequence_mask,
                                       valid_lens_mask, window_mask)
from attn_jax.functional.multihead import (init_multi_head_params, linear,
                                           merge_heads, multi_head_attention, project_heads,
                                           project_out, split_heads)
from attn_jax.functional.positions import (alibi_bias, alibi_slopes, apply_rotary,
                                           rotary_angles, sincos_2d_positions,
                                           sinusoidal_positions)
# attention without the softmax
from attn_jax.functional.nonsoftmax import (linear_attention, performer_features,
                                            sigmoid_attention)
from attn_jax.functional.scoring import (additive_scores, cosine_scores, dot_product_scores,
                                         gaussian_kernel_scores, init_additive_params,
                                         scaled_dot_product_scores)
# vision: patches, Swin windows, STN sampling
from attn_jax.functional.patches import (image_to_patches, patches_to_image,
                                         resample_grid_embeddings)
from attn_jax.functional.sampling import affine_grid, grid_sample, identity_theta
from attn_jax.functional.windows import (cyclic_shift, pad_to_window, relative_position_bias,
                                         relative_position_index, reverse_cyclic_shift,
                                         shifted_window_mask, window_padding_mask,
                                         window_partition, window_reverse)
# performance: blockwise (flash) attention and backend selection
from attn_jax.functional.backends import cudnn_supported, select_implementation
from attn_jax.functional.blockwise import blockwise_attention

from attn_jax.functional.rollout import attention_rollout

__all__ = [n for n in dir() if not n.startswith("_")]
