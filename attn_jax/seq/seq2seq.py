"""RNN encoder-decoder (Seq2Seq) with no attention, Bahdanau or Luong attention.

    model = Seq2Seq(src_vocab=13, tgt_vocab=13, embed_width=32, width=64, attention='bahdanau')
    variables = model.init(key, src, tgt_in)
    logits = model.apply(variables, src, tgt_in, train=True, rngs={'dropout': key})
    logits, state = model.apply(variables, src, tgt_in, mutable=['intermediates'])
    state['intermediates']['cross_attention']   # ([batch, tgt_len, src_len],)

Teacher forcing scans `DecoderStep` over the target with `nn.scan`; incremental
decoding (`init_decode_state` + `decode_step`, used by `attn_jax.seq.decoding`)
calls the very same step module one token at a time, so both paths share weights
and agree to float precision.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from typing import Any

from attn_jax.functional import _checks as C
from attn_jax.seq.rnn import DecoderStep, RNNEncoder, carry_from_h, zero_carry
from attn_jax.tokens import PAD


def source_lengths(src: jax.Array, src_lens: jax.Array | None = None,
                   pad_id: int = PAD) -> jax.Array:
  """Valid lengths [batch]: `src_lens` if given, else the number of non-PAD tokens of src."""
  C.check_rank("source_lengths", "src", src, "[batch, src_len] token ids", rank=2)
  if src_lens is not None:
    return jnp.asarray(src_lens, jnp.int32)
  return jnp.sum(src != pad_id, axis=1).astype(jnp.int32)


class Seq2Seq(nn.Module):
  """RNN encoder-decoder.

  Attributes:
    src_vocab: source vocabulary size.
    tgt_vocab: target vocabulary size (the logits' width).
    embed_width: embedding width (encoder and decoder).
    width: recurrent units (per direction in the encoder; the decoder has `width`).
    depth: stacked recurrent layers in the encoder and in the decoder.
    cell: 'gru' | 'lstm'.
    bidirectional: bidirectional encoder.
    attention: 'none_context' | 'none_init' | 'bahdanau' | 'luong_dot' | 'luong_general' |
      'luong_concat' (see `DecoderStep`).
    dropout_rate: on embeddings, between layers and before the output layer.
    pad_id: padding id (source lengths are counted from it unless given).
    sow_weights: with 'intermediates' mutable, sow the decoder's 'cross_attention'.
    dtype: compute dtype (e.g. bfloat16); logits stay float32.
    param_dtype: parameter dtype (float32).
  """
  src_vocab: int
  tgt_vocab: int
  embed_width: int = 32
  width: int = 64
  depth: int = 1
  cell: str = "gru"
  bidirectional: bool = False
  attention: str = "bahdanau"
  dropout_rate: float = 0.0
  pad_id: int = PAD
  sow_weights: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = RNNEncoder(self.src_vocab, self.embed_width, self.width, self.depth,
                              self.cell, self.bidirectional, self.dropout_rate, **kw)
    self.decoder = DecoderStep(self.tgt_vocab, self.embed_width, self.width, self.depth,
                               self.cell, self.attention, self.dropout_rate, **kw)
    if self.attention != "none_context":
      self.bridge = [nn.Dense(self.width, **kw) for _ in range(self.depth)]
    if self.attention == "bahdanau" or (self.attention == "luong_dot" and self.bidirectional):
      # bahdanau: W_k of the additive score, applied once per sentence, not at every step;
      # luong_dot: dot needs equal widths.
      self.key_proj = nn.Dense(self.width, use_bias=False, **kw)

  def encode(self, src: jax.Array, src_lens: jax.Array | None = None,
             train: bool = False) -> dict:
    """src: [batch, src_len] -> the decoder's initial state and memory (a dict of arrays,
    every leaf with a leading batch axis): 'dec' (carries + feed), 'memory'
    [batch, src_len, width * dirs], 'keys', 'src_lens' [batch], 'context' [batch, width * dirs].
    """
    lens = source_lengths(src, src_lens, self.pad_id)
    memory, finals = self.encoder(src, lens, train)
    batch, dtype = src.shape[0], self.dtype or jnp.float32
    if self.attention == "none_context":
      carry = tuple(zero_carry(self.cell, batch, self.width, dtype) for _ in finals)
    else:
      carry = tuple(carry_from_h(self.cell, jnp.tanh(b(f))) for b, f in zip(self.bridge, finals))
    keys = self.key_proj(memory) if hasattr(self, "key_proj") else memory
    dec = {"carry": carry, "feed": jnp.zeros((batch, self.width), dtype)}
    return {"dec": dec, "memory": memory, "keys": keys, "src_lens": lens, "context": finals[-1]}

  def __call__(self, src: jax.Array, tgt_in: jax.Array, src_lens: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """Teacher forcing. src: [batch, src_len]; tgt_in: [batch, tgt_len] (BOS first).

    Returns logits [batch, tgt_len, tgt_vocab] (float32). With 'intermediates' mutable,
    sows 'cross_attention' [batch, tgt_len, src_len] (all zero for the 'none_*' decoders).
    """
    C.check_rank("Seq2Seq", "tgt_in", tgt_in, "[batch, tgt_len] token ids", rank=2)
    st = self.encode(src, src_lens, train)

    def body(step, dec, token, memory, keys, lens, context):
      return step.features(dec, token, memory, keys, lens, context, train)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                   in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                   out_axes=1)
    _, (feats, weights) = scan(self.decoder, st["dec"], tgt_in, st["memory"], st["keys"],
                               st["src_lens"], st["context"])
    if self.sow_weights and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "cross_attention", weights)
    return self.decoder.logits(feats, train)   # all steps in one matmul

  def init_decode_state(self, src: jax.Array, max_len: int,
                        src_lens: jax.Array | None = None) -> dict:
    """State for `decode_step` (`max_len` is unused: an RNN needs no cache slots)."""
    del max_len
    return self.encode(src, src_lens)

  def decode_step(self, state: dict, token: jax.Array):
    """One step: token [batch] -> (logits [batch, tgt_vocab], state, weights [batch, src_len])."""
    dec, (logits, weights) = self.decoder(state["dec"], token, state["memory"], state["keys"],
                                          state["src_lens"], state["context"])
    return logits, {**state, "dec": dec}, weights
