"""A decoder-only Transformer language model (pre-LN, GPT style) from `MultiHeadAttention`.

    model = TransformerLM(vocab_size=100, width=128, depth=4, num_heads=4)
    variables = model.init(key, tokens)                     # tokens: [batch, len] int32
    logits = model.apply(variables, tokens, positions, segment_ids, train=True,
                         rngs={'dropout': key})             # [batch, len, vocab] float32

Packed rows (`attn_jax.data.packing`) pass `segment_ids` (a token attends only to earlier
tokens of its own segment; 0 = padding) and `positions` (restarting per segment). With
`decode=True` the self-attention keeps a key/value cache and the model is called one
token (or a prompt) at a time with explicit positions: `attn_jax.seq.sampling.sample`.

Positions: 'learned' (a [max_len, width] table added to the embeddings) or 'rope'
(rotary, applied to queries and keys inside each attention layer). The output layer is
tied to the token embedding. Layer parameters sit under `block{i}` (`block_scan` with
`scan_layers`), each with `attn`, `mlp/fc1`, `mlp/fc2`, `ln1`, `ln2`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.layers import MlpBlock, MultiHeadAttention, run_stack


class DecoderBlock(nn.Module):
  """Pre-LN causal self-attention + MLP. x: [b, n, width] -> [b, n, width].

  Attributes:
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    dropout_rate: on both sublayer outputs and inside the MLP.
    num_kv_heads: key/value heads (grouped-query attention; None = num_heads).
    window: left context in tokens (a causal (window, 0) band; None = all).
    softcap: attention-logit soft-cap (None = off).
    position: 'learned' | 'rope' (the block rotates queries and keys for 'rope').
    decode: key/value cache for incremental decoding (causality then comes from it).
    sow_weights: with 'intermediates' mutable, the attention sows its weights.
    dtype: compute dtype (e.g. bfloat16; None: from the inputs and params).
    param_dtype: parameter dtype.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  num_kv_heads: int | None = None
  window: int | None = None
  softcap: float | None = None
  position: str = "learned"
  decode: bool = False
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
               train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    extra = {}
    if self.num_kv_heads is not None and self.num_kv_heads != self.num_heads:
      extra["num_kv_heads"] = self.num_kv_heads
    if self.window is not None:
      extra["window"] = (self.window, 0)
    if self.softcap is not None:
      extra["softcap"] = self.softcap
    call_kw = {}
    if self.position == "rope":
      extra["position"] = "rope"
      call_kw["positions"] = positions
    attn = MultiHeadAttention(self.num_heads, decode=self.decode, sow_weights=self.sow_weights,
                              name="attn", **extra, **kw)
    h = nn.LayerNorm(1e-5, name="ln1", **kw)(x)
    y = attn(h, is_causal=not self.decode, q_segment_ids=segment_ids, deterministic=not train,
             **call_kw)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    mlp = MlpBlock(self.mlp_dim, activation="gelu", dropout_rate=self.dropout_rate, name="mlp",
                   kernel_init=nn.initializers.normal(0.02), bias_init=nn.initializers.zeros_init(),
                   **kw)
    y = mlp(nn.LayerNorm(1e-5, name="ln2", **kw)(x), train)
    return x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class TransformerLM(nn.Module):
  """Decoder-only language model: tokens [b, n] int32 -> logits [b, n, vocab_size] float32.

  Attributes:
    vocab_size: number of token ids.
    width: model (embedding) width.
    depth: number of decoder blocks.
    num_heads: attention heads per block.
    mlp_dim: MLP hidden width.
    num_kv_heads: key/value heads (grouped-query attention; None = num_heads).
    window: sliding-window attention over this many previous tokens (None = full causal).
    softcap: attention-logit soft-cap `cap * tanh(s / cap)` (None = off).
    position: 'learned' (absolute table) | 'rope' (rotary in every layer).
    max_len: longest position (the learned table's length; the cache length when decoding
      is the init input's length).
    dropout_rate: on embeddings, sublayer outputs and inside the MLP.
    decode: key/value cache for incremental decoding (`attn_jax.seq.sampling`).
    sow_weights: with 'intermediates' mutable every layer sows its attention maps.
    dtype: compute dtype (e.g. bfloat16); logits are float32.
    param_dtype: parameter dtype (float32).
    scan_layers: one `nn.scan` over the blocks (parameters under `block_scan`).
    remat: rematerialisation policy per block: 'none' | 'full' | 'dots'.
  """
  vocab_size: int
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  num_kv_heads: int | None = None
  window: int | None = None
  softcap: float | None = None
  position: str = "learned"
  max_len: int = 1024
  dropout_rate: float = 0.1
  decode: bool = False
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Next-token logits for every position of `tokens`.

    Args:
      tokens: [batch, len] int32 token ids.
      positions: [batch, len] int32 positions (default 0 .. len-1; pass them when
        decoding, and per segment for packed rows). Below `max_len` for 'learned'.
      segment_ids: [batch, len] int32 segment ids of packed rows (default: one segment);
        a token attends only to earlier tokens of its segment. Ignored with `decode`.
      train: dropout on (needs the 'dropout' RNG stream).

    Returns:
      [batch, len, vocab_size] float32 logits.

    Raises:
      ValueError: tokens not [batch, len], positions or segment_ids not of tokens'
        shape, or an unknown `position`.
    """
    if tokens.ndim != 2:
      raise ValueError(f"TransformerLM: tokens must be [batch, len] int ids, got shape "
                       f"{tuple(tokens.shape)}.")
    if self.position not in ("learned", "rope"):
      raise ValueError(f"TransformerLM: position must be 'learned' or 'rope', got "
                       f"{self.position!r}.")
    b, n = tokens.shape
    for name, arr in (("positions", positions), ("segment_ids", segment_ids)):
      if arr is not None and tuple(arr.shape) != (b, n):
        raise ValueError(f"TransformerLM: {name} must be [batch, len] = {(b, n)} like tokens, "
                         f"got {tuple(arr.shape)}.")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     name="embed", **kw)
    x = embed(tokens)
    if self.position == "learned":
      table = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.width),
                         self.param_dtype)
      x = x + jnp.take(table, positions, axis=0).astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    segments = None if self.decode else segment_ids   # the cache holds one sequence per row
    block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                 num_kv_heads=self.num_kv_heads, window=self.window, softcap=self.softcap,
                 position=self.position, decode=self.decode, sow_weights=self.sow_weights, **kw)
    x = run_stack(lambda name, _: DecoderBlock(**block, name=name), x, positions, segments,
                  depth=self.depth, train=train, scan=self.scan_layers, remat=self.remat,
                  name="block")
    x = nn.LayerNorm(1e-5, name="norm", **kw)(x)
    return embed.attend(x).astype(jnp.float32)
