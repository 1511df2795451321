"""attn_jax: attention in JAX, from pure functions to trained models.

- `attn_jax.functional` (as `F`): pure jnp attention functions, no Flax.
- `attn_jax.layers`: Flax attention layers built from `functional`.
- `attn_jax.seq`: sequence models (Seq2Seq, Transformer, decoding).
- `attn_jax.vision`: vision models (ViT, Swin, SE/ECA/CBAM, STN).
"""
from attn_jax import functional, layers, seq, vision
from attn_jax.layers import *  # noqa: F401,F403
from attn_jax.seq import *  # noqa: F401,F403
from attn_jax.vision import *  # noqa: F401,F403

__version__ = "0.1.0"
__all__ = (["functional", "layers", "seq", "vision", "__version__"] + layers.__all__
           + seq.__all__ + vision.__all__)
