"""Transformer encoder-decoder (Vaswani et al., 2017) from `MultiHeadAttention`.

    model = Transformer(src_vocab=13, tgt_vocab=13, d_model=64, num_heads=4, d_ff=128)
    variables = model.init(key, src, tgt_in)
    logits = model.apply(variables, src, tgt_in, deterministic=False, rngs={'dropout': key})

Post-LN (`x = LN(x + sublayer(x))`, the paper's and torch's default) or pre-LN
(`x = x + sublayer(LN(x))` and a final LN per stack). Layer parameter names follow
torch's `TransformerEncoderLayer` (`self_attn`, `ff1`, `ff2`, `ln1`..`ln3`) so weights
copy across (see tests/test_seq_transformer.py). With `decode=True` the decoder
self-attention keeps a key/value cache: `init_decode_state` + `decode_step` run one
token at a time (used by `attn_jax.seq.decoding`).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F
from attn_jax.layers.attention import MultiHeadAttention
from attn_jax.seq.seq2seq import source_lengths
from attn_jax.seq.tasks import PAD

ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False)}


class FeedForward(nn.Module):
  """Position-wise `ff2(dropout(act(ff1(x))))`: [..., d_model] -> [..., d_model]."""
  d_ff: int
  activation: str = "relu"
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}.")
    h = ACTIVATIONS[self.activation](nn.Dense(self.d_ff, name="ff1")(x))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(x.shape[-1], name="ff2")(h)


def _sublayer(x, f, norm, drop, pre_ln: bool, deterministic: bool):
  """Residual block: pre-LN `x + drop(f(norm(x)))` or post-LN `norm(x + drop(f(x)))`.

  f returns (y, aux); returns (x, aux).
  """
  y, aux = f(norm(x) if pre_ln else x)
  x = x + drop(y, deterministic=deterministic)
  return (x if pre_ln else norm(x)), aux


class EncoderLayer(nn.Module):
  """Self-attention + feed-forward. x: [batch, len, d_model], src_lens: [batch] -> same shape."""
  num_heads: int
  d_ff: int
  dropout: float = 0.0
  pre_ln: bool = False
  activation: str = "relu"
  sow_weights: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, src_lens: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    drop = nn.Dropout(self.dropout)
    sa = MultiHeadAttention(self.num_heads, dropout_rate=self.dropout,
                            sow_weights=self.sow_weights, name="self_attn")
    x, _ = _sublayer(x, lambda h: (sa(h, valid_lens=src_lens, deterministic=deterministic), None),
                     nn.LayerNorm(1e-5, name="ln1"), drop, self.pre_ln, deterministic)
    ff = FeedForward(self.d_ff, self.activation, self.dropout, name="ff")
    x, _ = _sublayer(x, lambda h: (ff(h, deterministic), None), nn.LayerNorm(1e-5, name="ln2"),
                     drop, self.pre_ln, deterministic)
    return x


class DecoderLayer(nn.Module):
  """Causal self-attention (cached when `decode`), cross-attention, feed-forward.

  x: [batch, tgt_len, d_model]; memory: [batch, src_len, d_model]; src_lens: [batch]
  -> (x, cross-attention weights [batch, heads, tgt_len, src_len]).
  """
  num_heads: int
  d_ff: int
  dropout: float = 0.0
  pre_ln: bool = False
  activation: str = "relu"
  decode: bool = False
  sow_weights: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array, src_lens: jax.Array | None = None,
               deterministic: bool = True):
    drop = nn.Dropout(self.dropout)
    mha = lambda name, dec: MultiHeadAttention(self.num_heads, dropout_rate=self.dropout,
                                               decode=dec, sow_weights=self.sow_weights, name=name)
    sa, ca = mha("self_attn", self.decode), mha("cross_attn", False)
    x, _ = _sublayer(x, lambda h: (sa(h, is_causal=True, deterministic=deterministic), None),
                     nn.LayerNorm(1e-5, name="ln1"), drop, self.pre_ln, deterministic)
    x, w = _sublayer(x, lambda h: ca(h, memory, valid_lens=src_lens, deterministic=deterministic,
                                     return_weights=True),
                     nn.LayerNorm(1e-5, name="ln2"), drop, self.pre_ln, deterministic)
    ff = FeedForward(self.d_ff, self.activation, self.dropout, name="ff")
    x, _ = _sublayer(x, lambda h: (ff(h, deterministic), None), nn.LayerNorm(1e-5, name="ln3"),
                     drop, self.pre_ln, deterministic)
    return x, w


class Transformer(nn.Module):
  """Encoder-decoder Transformer.

  Attributes:
    src_vocab, tgt_vocab: vocabulary sizes.
    d_model, num_heads, d_ff: widths (d_ff = the feed-forward expansion, e.g. 4 * d_model).
    num_layers: layers per stack, unless `enc_layers` / `dec_layers` say otherwise.
    dropout: on embeddings, attention weights, sublayer outputs and inside the feed-forward.
    pre_ln: pre-LN (True) or the original post-LN (False).
    activation: 'relu' | 'gelu'.
    positions: 'sinusoidal' | 'learned' (learned: [max_len, d_model], N(0, 0.02)).
    share_embeddings: one embedding table for source and target (needs equal vocabularies).
    max_len: longest source / target sequence.
    pad_id: padding id; source lengths are counted from it unless given.
    decode: cache the decoder self-attention keys/values (incremental decoding).
    sow_weights: sow every layer's attention maps ('attention_weights' under each
      `self_attn` / `cross_attn`) into 'intermediates'.
  """
  src_vocab: int
  tgt_vocab: int
  d_model: int = 64
  num_heads: int = 4
  d_ff: int = 256
  num_layers: int = 2
  enc_layers: int | None = None
  dec_layers: int | None = None
  dropout: float = 0.1
  pre_ln: bool = False
  activation: str = "relu"
  positions: str = "sinusoidal"
  share_embeddings: bool = False
  max_len: int = 256
  pad_id: int = PAD
  decode: bool = False
  sow_weights: bool = True

  def setup(self):
    if self.share_embeddings and self.src_vocab != self.tgt_vocab:
      raise ValueError("Transformer: share_embeddings needs src_vocab == tgt_vocab, got "
                       f"{self.src_vocab} and {self.tgt_vocab}.")
    self.src_embed = nn.Embed(self.src_vocab, self.d_model)
    if not self.share_embeddings:
      self.tgt_embed = nn.Embed(self.tgt_vocab, self.d_model)
    if self.positions == "learned":
      self.pos_table = self.param("pos_embed", nn.initializers.normal(0.02),
                                  (self.max_len, self.d_model))
    elif self.positions == "sinusoidal":
      self.pos_table = F.sinusoidal_positions(self.max_len, self.d_model)
    else:
      raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {self.positions!r}.")
    kw = dict(num_heads=self.num_heads, d_ff=self.d_ff, dropout=self.dropout, pre_ln=self.pre_ln,
              activation=self.activation, sow_weights=self.sow_weights)
    self.enc = [EncoderLayer(**kw) for _ in range(self.enc_layers or self.num_layers)]
    self.dec = [DecoderLayer(decode=self.decode, **kw)
                for _ in range(self.dec_layers or self.num_layers)]
    if self.pre_ln:
      self.enc_norm, self.dec_norm = nn.LayerNorm(1e-5), nn.LayerNorm(1e-5)
    self.drop = nn.Dropout(self.dropout)
    self.out = nn.Dense(self.tgt_vocab)

  def _embed(self, table: nn.Embed, tokens: jax.Array, offset, deterministic: bool) -> jax.Array:
    """tokens [batch, len] at positions offset.. -> [batch, len, d_model] (scaled by sqrt(d))."""
    if tokens.shape[1] > self.max_len:
      raise ValueError(f"Transformer: sequence length {tokens.shape[1]} > max_len={self.max_len}.")
    pos = jax.lax.dynamic_slice_in_dim(self.pos_table, offset, tokens.shape[1])
    x = table(tokens) * math.sqrt(self.d_model) + pos
    return self.drop(x, deterministic=deterministic)

  def encode(self, src: jax.Array, src_lens: jax.Array | None = None,
             deterministic: bool = True):
    """src: [batch, src_len] -> (memory [batch, src_len, d_model], src_lens [batch])."""
    lens = source_lengths(src, src_lens, self.pad_id)
    x = self._embed(self.src_embed, src, 0, deterministic)
    for layer in self.enc:
      x = layer(x, lens, deterministic)
    return (self.enc_norm(x) if self.pre_ln else x), lens

  def run_decoder(self, tgt_in: jax.Array, memory: jax.Array, src_lens: jax.Array,
                  deterministic: bool = True, offset=0):
    """tgt_in: [batch, tgt_len] at positions offset.. -> (logits [batch, tgt_len, tgt_vocab],
    last layer's cross-attention [batch, heads, tgt_len, src_len])."""
    table = self.src_embed if self.share_embeddings else self.tgt_embed
    x = self._embed(table, tgt_in, offset, deterministic)
    for layer in self.dec:
      x, w = layer(x, memory, src_lens, deterministic)
    x = self.dec_norm(x) if self.pre_ln else x
    return self.out(x), w

  def __call__(self, src: jax.Array, tgt_in: jax.Array, src_lens: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Teacher forcing. src: [batch, src_len]; tgt_in: [batch, tgt_len] (BOS first).

    Returns logits [batch, tgt_len, tgt_vocab]; sows the last decoder layer's
    'cross_attention' [batch, heads, tgt_len, src_len] into 'intermediates'.
    """
    memory, lens = self.encode(src, src_lens, deterministic)
    logits, w = self.run_decoder(tgt_in, memory, lens, deterministic)
    self.sow("intermediates", "cross_attention", w)
    return logits

  def init_decode_state(self, src: jax.Array, max_len: int,
                        src_lens: jax.Array | None = None) -> dict:
    """Encodes src and (with `decode=True`, 'cache' mutable) creates an empty cache of
    `max_len` slots. Returns {'memory', 'src_lens', 'pos' [batch]}."""
    memory, lens = self.encode(src, src_lens)
    if self.decode:  # a full-length pass creates the cache variables ([.., max_len, ..], empty)
      self.run_decoder(jnp.zeros((src.shape[0], max_len), jnp.int32), memory, lens)
    return {"memory": memory, "src_lens": lens, "pos": jnp.zeros((src.shape[0],), jnp.int32)}

  def decode_step(self, state: dict, token: jax.Array):
    """One cached step (`decode=True`): token [batch] -> (logits [batch, tgt_vocab], state,
    last layer's cross-attention averaged over heads [batch, src_len])."""
    logits, w = self.run_decoder(token[:, None], state["memory"], state["src_lens"],
                                 offset=state["pos"][0])
    return logits[:, 0], {**state, "pos": state["pos"] + 1}, w[:, :, 0].mean(1)
