"""Sequence models: RNN Seq2Seq with attention, the Transformer, decoding.

- `Seq2Seq` (GRU/LSTM, (bi)directional, no attention / Bahdanau / Luong) and
  `Transformer` (post-/pre-LN encoder-decoder), both called as
  `model.apply(variables, src [batch, src_len], tgt_in [batch, tgt_len], train=False)`
  -> logits `[batch, tgt_len, tgt_vocab]` float32.
- `greedy_decode`, `beam_search`: jit-compiled, fixed `max_len`, return `DecodeOutput`.
- Token ids (`attn_jax.tokens`): PAD=0, BOS=1, EOS=2. Generated tasks (reverse, copy,
  sort, dates) are data: `attn_jax.data.tasks`.
"""
from attn_jax.seq.decoding import DecodeOutput, beam_search, greedy_decode, length_penalty_factor
from attn_jax.seq.rnn import ATTENTIONS, DecoderStep, MaskedCell, RNNEncoder
from attn_jax.seq.seq2seq import Seq2Seq, source_lengths
from attn_jax.seq.transformer import DecoderLayer, EncoderLayer, Transformer
from attn_jax.tokens import BOS, EOS, PAD

__all__ = ["ATTENTIONS", "BOS", "EOS", "PAD", "DecodeOutput", "DecoderLayer", "DecoderStep",
           "EncoderLayer", "MaskedCell", "RNNEncoder", "Seq2Seq", "Transformer", "beam_search",
           "greedy_decode", "length_penalty_factor", "source_lengths"]
