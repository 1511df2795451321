"""Transformer encoder-decoder (Vaswani et al., 2017) from `MultiHeadAttention`.

    model = Transformer(src_vocab=13, tgt_vocab=13, width=64, num_heads=4, mlp_dim=128)
    variables = model.init(key, src, tgt_in)
    logits = model.apply(variables, src, tgt_in, train=True, rngs={'dropout': key})

Post-LN (`x = LN(x + sublayer(x))`, the paper's and torch's default) or pre-LN
(`x = x + sublayer(LN(x))` and a final LN per stack). Layer parameter names follow
torch's `TransformerEncoderLayer` (`self_attn`, `cross_attn`, `ln1`..`ln3`; the
feed-forward is the shared `MlpBlock` as `mlp/fc1`, `mlp/fc2`) so weights copy across
(tests/test_seq_transformer.py). Attention maps are computed only when asked for:
with 'intermediates' mutable every layer sows its maps and the model sows the last
decoder layer's 'cross_attention'; otherwise every attention call runs on
`F.attention`'s fast path. With `decode=True` the decoder self-attention keeps a
key/value cache: `init_decode_state` + `decode_step` run one token at a time (used by
`attn_jax.seq.decoding`). `scan_layers` runs each stack as one `nn.scan`
(`encoder/layer_scan`, `decoder/layer_scan` with a leading [depth] axis).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import functional as F
from attn_jax.layers import MlpBlock, MultiHeadAttention, run_stack
from attn_jax.seq.seq2seq import source_lengths
from attn_jax.tokens import PAD

class Packing(NamedTuple):
  """Packed rows (`attn_jax.data.packing.pack_pairs`): int32 [batch, src_len] / [batch, tgt_len]."""
  src_segments: jax.Array
  tgt_segments: jax.Array
  src_positions: jax.Array
  tgt_positions: jax.Array


# torch.nn.Linear's default initialisation family (what the torch Transformer uses)
_DENSE = dict(kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros_init())


class _Layer(nn.Module):
  """What encoder and decoder layers share: sizes, dropout, dtypes, the residual wrapper."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  pre_ln: bool = False
  activation: str = "relu"
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  num_kv_heads: int | None = None
  window: Any = None            # self-attention only
  softcap: float | None = None
  rope: bool = False            # rotary positions in self-attention

  def _kw(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def _attn(self, name: str, decode: bool = False, self_attention: bool = True
            ) -> MultiHeadAttention:
    extra = dict(window=self.window, position="rope" if self.rope else "none") \
        if self_attention else {}
    return MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                              decode=decode, sow_weights=self.sow_weights, name=name,
                              num_kv_heads=self.num_kv_heads, softcap=self.softcap, **extra,
                              **self._kw())

  def _sublayer(self, x, f, norm_name: str, train: bool):
    """Pre-LN `x + drop(f(norm(x)))` or post-LN `norm(x + drop(f(x)))`; f returns (y, aux)."""
    norm = nn.LayerNorm(1e-5, name=norm_name, **self._kw())
    y, aux = f(norm(x) if self.pre_ln else x)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return (x if self.pre_ln else norm(x)), aux

  def _mlp(self, x, norm_name: str, train: bool):
    mlp = MlpBlock(self.mlp_dim, activation=self.activation, dropout_rate=self.dropout_rate,
                   name="mlp", **_DENSE, **self._kw())
    return self._sublayer(x, lambda h: (mlp(h, train), None), norm_name, train)[0]


class EncoderLayer(_Layer):
  """Self-attention + feed-forward. x: [batch, len, width], src_lens: [batch], segments:
  [batch, len] int segment ids or None (packed rows) -> [batch, len, width]."""

  @nn.compact
  def __call__(self, x: jax.Array, src_lens: jax.Array | None = None,
               segments: jax.Array | None = None, positions: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    sa = self._attn("self_attn")
    x, _ = self._sublayer(x, lambda h: (sa(h, valid_lens=src_lens, q_segment_ids=segments,
                                           positions=positions, deterministic=not train),
                                        None), "ln1", train)
    return self._mlp(x, "ln2", train)


class DecoderLayer(_Layer):
  """Causal self-attention (cached when `decode`), cross-attention, feed-forward.

  x: [batch, tgt_len, width]; memory: [batch, src_len, width]; src_lens: [batch];
  tgt_segments [batch, tgt_len] / src_segments [batch, src_len]: int segment ids or None
  (packed rows: attend within the own segment, cross-attend to the same segment)
  -> (x, cross-attention weights [batch, heads, tgt_len, src_len] with `return_weights`,
  which takes the reference attention path for the cross-attention; else None).
  """
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array, src_lens: jax.Array | None = None,
               tgt_segments: jax.Array | None = None, src_segments: jax.Array | None = None,
               positions: jax.Array | None = None, train: bool = False,
               return_weights: bool = False):
    sa, ca = self._attn("self_attn", self.decode), self._attn("cross_attn", self_attention=False)
    x, _ = self._sublayer(x, lambda h: (sa(h, is_causal=True, q_segment_ids=tgt_segments,
                                           positions=positions, deterministic=not train),
                                        None), "ln1", train)

    def cross(h):
      out = ca(h, memory, valid_lens=src_lens, q_segment_ids=tgt_segments,
               kv_segment_ids=src_segments, deterministic=not train,
               return_weights=return_weights)
      return out if return_weights else (out, None)

    x, w = self._sublayer(x, cross, "ln2", train)
    return self._mlp(x, "ln3", train), w


class _Stack(nn.Module):
  """`depth` encoder or decoder layers (unrolled or scanned) and the final pre-LN norm."""
  layer: dict          # EncoderLayer / DecoderLayer attributes
  decoder: bool
  depth: int
  final_norm: bool
  scan: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, x, *args, train: bool = False, return_weights: bool = False):
    cls = DecoderLayer if self.decoder else EncoderLayer
    out = run_stack(lambda name, _: cls(**self.layer, name=name), x, *args, depth=self.depth,
                    train=train, scan=self.scan, remat=self.remat, name="layer",
                    returns_aux=self.decoder,
                    static={"return_weights": return_weights} if self.decoder else None)
    x, w = out if self.decoder else (out, None)
    if self.final_norm:
      x = nn.LayerNorm(1e-5, dtype=self.layer["dtype"], param_dtype=self.layer["param_dtype"],
                       name="norm")(x)
    return (x, w) if self.decoder else x


class Transformer(nn.Module):
  """Encoder-decoder Transformer.

  Attributes:
    src_vocab: source vocabulary size.
    tgt_vocab: target vocabulary size (the logits' width).
    width: model width.
    num_heads: attention heads.
    mlp_dim: feed-forward hidden width.
    depth: layers per stack, unless `encoder_depth` / `decoder_depth` say otherwise.
    encoder_depth: encoder layers (default `depth`).
    decoder_depth: decoder layers (default `depth`).
    dropout_rate: on embeddings, sublayer outputs and inside the feed-forward.
    attention_dropout_rate: on the attention weights (> 0 takes the reference attention
      path: the fast kernels have no dropout; torch's layers use `dropout_rate` here).
    pre_ln: pre-LN (True) or the original post-LN (False).
    activation: 'relu' | 'gelu'.
    positions: 'sinusoidal' | 'learned' (learned: [max_len, width], N(0, 0.02)) added to the
      embeddings, or 'rope' (rotary positions in every self-attention, nothing added).
    num_kv_heads: key/value heads (grouped-query attention; None = num_heads).
    window: sliding window (left, right) of the self-attention (None = full; the decoder
      is causal either way).
    softcap: attention-logit soft-cap (None = off).
    share_embeddings: one embedding table for source and target (needs equal vocabularies).
    max_len: longest source / target sequence.
    pad_id: padding id; source lengths are counted from it unless given.
    decode: cache the decoder self-attention keys/values (incremental decoding).
    sow_weights: with 'intermediates' mutable, every attention layer sows its maps.
    dtype: compute dtype (e.g. bfloat16); softmax statistics and logits stay float32.
    param_dtype: parameter dtype (float32).
    scan_layers: each stack is one `nn.scan` over its layers.
    remat: rematerialisation policy per layer: 'none' | 'full' | 'dots'.
  """
  src_vocab: int
  tgt_vocab: int
  width: int = 64
  num_heads: int = 4
  mlp_dim: int = 256
  depth: int = 2
  encoder_depth: int | None = None
  decoder_depth: int | None = None
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  pre_ln: bool = False
  activation: str = "relu"
  positions: str = "sinusoidal"
  share_embeddings: bool = False
  max_len: int = 256
  pad_id: int = PAD
  decode: bool = False
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: str = "none"
  num_kv_heads: int | None = None
  window: Any = None
  softcap: float | None = None

  def setup(self):
    if self.share_embeddings and self.src_vocab != self.tgt_vocab:
      raise ValueError("Transformer: share_embeddings needs src_vocab == tgt_vocab, got "
                       f"{self.src_vocab} and {self.tgt_vocab}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.src_embed = nn.Embed(self.src_vocab, self.width, **kw)
    if not self.share_embeddings:
      self.tgt_embed = nn.Embed(self.tgt_vocab, self.width, **kw)
    if self.positions == "learned":
      self.pos_table = self.param("pos_embed", nn.initializers.normal(0.02),
                                  (self.max_len, self.width), self.param_dtype)
    elif self.positions == "sinusoidal":
      self.pos_table = F.sinusoidal_positions(self.max_len, self.width)
    elif self.positions == "rope":
      self.pos_table = None   # rotary positions inside the self-attentions instead
    else:
      raise ValueError(f"positions must be 'sinusoidal', 'learned' or 'rope', got "
                       f"{self.positions!r}.")
    layer = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
                 attention_dropout_rate=self.attention_dropout_rate, pre_ln=self.pre_ln,
                 activation=self.activation, sow_weights=self.sow_weights,
                 num_kv_heads=self.num_kv_heads, window=self.window, softcap=self.softcap,
                 rope=self.positions == "rope", **kw)
    stack = dict(final_norm=self.pre_ln, scan=self.scan_layers, remat=self.remat)
    self.encoder = _Stack(layer, False, self.encoder_depth or self.depth, **stack)
    self.decoder = _Stack({**layer, "decode": self.decode}, True,
                          self.decoder_depth or self.depth, **stack)
    self.drop = nn.Dropout(self.dropout_rate)
    self.out = nn.Dense(self.tgt_vocab, **kw)

  def _embed(self, table: nn.Embed, tokens: jax.Array, offset, train: bool,
             positions: jax.Array | None = None) -> jax.Array:
    """tokens [batch, len] at positions offset.. (or at `positions` [batch, len]) ->
    [batch, len, width] (scaled by sqrt(width))."""
    if tokens.shape[1] > self.max_len:
      raise ValueError(f"Transformer: sequence length {tokens.shape[1]} > max_len={self.max_len}.")
    x = table(tokens) * math.sqrt(self.width)
    if self.pos_table is not None:
      if positions is not None:
        pos = jnp.take(self.pos_table, positions, axis=0)
      else:
        pos = jax.lax.dynamic_slice_in_dim(self.pos_table, offset, tokens.shape[1])
      x = x + pos.astype(self.dtype or jnp.float32)
    return self.drop(x, deterministic=not train)

  def encode(self, src: jax.Array, src_lens: jax.Array | None = None, train: bool = False,
             packed: Packing | None = None):
    """src: [batch, src_len] -> (memory [batch, src_len, width], src_lens [batch])."""
    lens = source_lengths(src, src_lens, self.pad_id)
    pos, seg = (None, None) if packed is None else (packed.src_positions, packed.src_segments)
    x = self._embed(self.src_embed, src, 0, train, pos)
    return self.encoder(x, lens, seg, pos, train=train), lens

  def run_decoder(self, tgt_in: jax.Array, memory: jax.Array, src_lens: jax.Array,
                  train: bool = False, offset=0, return_weights: bool = False,
                  packed: Packing | None = None):
    """tgt_in: [batch, tgt_len] at positions offset.. -> (logits [batch, tgt_len, tgt_vocab]
    float32, the last layer's cross-attention [batch, heads, tgt_len, src_len] or None
    without `return_weights`)."""
    table = self.src_embed if self.share_embeddings else self.tgt_embed
    pos, tgt_seg, src_seg = (None, None, None) if packed is None else (
        packed.tgt_positions, packed.tgt_segments, packed.src_segments)
    x = self._embed(table, tgt_in, offset, train, pos)
    x, w = self.decoder(x, memory, src_lens, tgt_seg, src_seg, pos, train=train,
                        return_weights=return_weights)
    return self.out(x).astype(jnp.float32), w

  def __call__(self, src: jax.Array, tgt_in: jax.Array, src_lens: jax.Array | None = None,
               train: bool = False, packed: Packing | None = None) -> jax.Array:
    """Teacher forcing. src: [batch, src_len]; tgt_in: [batch, tgt_len] (BOS first).

    packed: segment ids and per-segment positions of packed rows (`attn_jax.data.packing`):
    each target segment attends (causally) to itself and to its own source segment.
    Returns logits [batch, tgt_len, tgt_vocab] (float32). With 'intermediates' mutable, also
    sows the last decoder layer's 'cross_attention' [batch, heads, tgt_len, src_len].
    """
    memory, lens = self.encode(src, src_lens, train, packed)
    want = self.is_mutable_collection("intermediates")
    logits, w = self.run_decoder(tgt_in, memory, lens, train, return_weights=want,
                                 packed=packed)
    if want:
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
                                 offset=state["pos"][0], return_weights=True)
    return logits[:, 0], {**state, "pos": state["pos"] + 1}, w[:, :, 0].mean(1)
