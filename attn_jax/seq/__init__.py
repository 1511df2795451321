"""Sequence models: RNN Seq2Seq with attention, the Transformer, decoding, synthetic tasks.

- `Seq2Seq` (GRU/LSTM, (bi)directional, no attention / Bahdanau / Luong) and
  `Transformer` (post-/pre-LN encoder-decoder), both called as
  `model.apply(variables, src [batch, src_len], tgt_in [batch, tgt_len])` -> logits
  `[batch, tgt_len, tgt_vocab]`.
- `greedy_decode`, `beam_search`: jit-compiled, fixed `max_len`, return `DecodeOutput`.
- `tasks`: `reverse_task`, `copy_task`, `sort_task`, `date_task`, `CharVocab`, `shift_right`.
- Token ids: PAD=0, BOS=1, EOS=2.
"""
from attn_jax.seq import tasks
from attn_jax.seq.decoding import DecodeOutput, beam_search, greedy_decode, length_penalty_factor
from attn_jax.seq.rnn import ATTENTIONS, DecoderStep, MaskedCell, RNNEncoder
from attn_jax.seq.seq2seq import Seq2Seq, source_lengths
from attn_jax.seq.tasks import (BOS, EOS, PAD, CharVocab, copy_task, date_task, get_task,
                                reverse_task, shift_right, sort_task)
from attn_jax.seq.transformer import DecoderLayer, EncoderLayer, FeedForward, Transformer

__all__ = ["ATTENTIONS", "BOS", "EOS", "PAD", "CharVocab", "DecodeOutput", "DecoderLayer",
           "DecoderStep", "EncoderLayer", "FeedForward", "MaskedCell", "RNNEncoder", "Seq2Seq",
           "Transformer", "beam_search", "copy_task", "date_task", "get_task", "greedy_decode",
           "length_penalty_factor", "reverse_task", "shift_right", "sort_task",
           "source_lengths", "tasks"]
