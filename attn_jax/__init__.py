"""attn_jax: attention in JAX, from pure functions to trained models.

- `attn_jax.functional` (imported as `F`): pure jnp attention functions.
"""
from attn_jax import functional

__version__ = "0.1.0"
__all__ = ["functional", "__version__"]
