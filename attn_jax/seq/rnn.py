"""Recurrent pieces of the Seq2Seq family: a masked cell, the encoder, one decoder step.

The recurrences run with `nn.scan` over the time axis (axis 1); nothing loops over
time in Python. Padding is handled by freezing the carry on padded steps, so the
final state of a sequence is the state after its last real token whatever the
padded width, and padded outputs are zero.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.layers.attention import AdditiveAttention, LuongAttention

ATTENTIONS = ("none_context", "none_init", "bahdanau", "luong_dot", "luong_general",
              "luong_concat")
Carry = Any  # GRU: h [batch, hidden]; LSTM: (c, h)


def make_cell(cell: str, hidden: int, name: str | None = None) -> nn.Module:
  """'gru' | 'lstm' -> a Flax recurrent cell with `hidden` units."""
  if cell == "gru":
    return nn.GRUCell(hidden, name=name)
  if cell == "lstm":
    return nn.LSTMCell(hidden, name=name)
  raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}.")


def zero_carry(cell: str, batch: int, hidden: int) -> Carry:
  """All-zero initial carry for a cell: h [batch, hidden] (GRU) or (c, h) (LSTM)."""
  h = jnp.zeros((batch, hidden), jnp.float32)
  return (h, h) if cell == "lstm" else h


def carry_from_h(cell: str, h: jax.Array) -> Carry:
  """Carry whose hidden state is h [batch, hidden] (LSTM memory cell zero)."""
  return (jnp.zeros_like(h), h) if cell == "lstm" else h


def carry_h(cell: str, carry: Carry) -> jax.Array:
  """The hidden state h [batch, hidden] of a carry."""
  return carry[1] if cell == "lstm" else carry


class MaskedCell(nn.Module):
  """One step of a cell that keeps its carry (and outputs zeros) where `valid` is False."""
  cell: str
  hidden: int

  @nn.compact
  def __call__(self, carry: Carry, inputs: tuple[jax.Array, jax.Array]):
    """carry; inputs (x [batch, d_in], valid [batch] bool) -> (carry, y [batch, hidden])."""
    x, valid = inputs
    new, y = make_cell(self.cell, self.hidden, name="cell")(carry, x)
    keep = lambda n, o: jnp.where(valid[:, None], n, o)
    return jax.tree.map(keep, new, carry), jnp.where(valid[:, None], y, 0.0)


def _scan_cell(reverse: bool):
  return nn.scan(MaskedCell, variable_broadcast="params", split_rngs={"params": False},
                 in_axes=1, out_axes=1, reverse=reverse)


class RNNEncoder(nn.Module):
  """Embedding + a stack of GRU/LSTM layers, optionally bidirectional.

  Attributes:
    vocab: source vocabulary size; embed_dim: embedding width; hidden: units per direction.
    num_layers: stacked layers; cell: 'gru' | 'lstm'; bidirectional: run a backward pass too.
    dropout: between layers (when not deterministic).
  """
  vocab: int
  embed_dim: int
  hidden: int
  num_layers: int = 1
  cell: str = "gru"
  bidirectional: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, src: jax.Array, src_lens: jax.Array, deterministic: bool = True):
    """src: [batch, src_len] ids; src_lens: [batch] valid lengths.

    Returns:
      outputs [batch, src_len, hidden * dirs] (top layer, zero at padding) and finals, a
      list with one [batch, hidden * dirs] final hidden state per layer (for the backward
      direction: its state after reading the first token).
    """
    batch, length = src.shape
    valid = jnp.arange(length)[None, :] < src_lens[:, None]
    x = nn.Embed(self.vocab, self.embed_dim, name="embed")(src)
    finals = []
    for layer in range(self.num_layers):
      if layer:
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
      outs, hs = [], []
      for d, reverse in enumerate((False, True)[: 1 + self.bidirectional]):
        c0 = zero_carry(self.cell, batch, self.hidden)
        c, y = _scan_cell(reverse)(self.cell, self.hidden, name=f"l{layer}_d{d}")(c0, (x, valid))
        outs.append(y)
        hs.append(carry_h(self.cell, c))
      x = jnp.concatenate(outs, -1)
      finals.append(jnp.concatenate(hs, -1))
    return x, finals


class DecoderStep(nn.Module):
  """One output step of an RNN decoder; scanned for teacher forcing, called alone to decode.

  attention:
    'none_context': no attention; the fixed context C (the encoder's final state) is fed
      with the embedding at every step; the initial state is zero.
    'none_init': no attention; C (bridged) is the initial hidden state, inputs are embeddings.
    'bahdanau': the previous state s_{i-1} queries the encoder outputs with additive scores;
      the fresh context c_i is fed with the embedding; logits from [s_i; c_i].
    'luong_dot' | 'luong_general' | 'luong_concat': the new state h_t queries the encoder
      outputs; h~_t = tanh(W_c [c_t; h_t]) gives the logits and is fed to the next step
      (input feeding). For 'dot' the encoder outputs are projected to `hidden` first.

  State (a dict): 'carry' (a tuple of per-layer carries) and 'feed' ([batch, hidden],
  Luong's h~_{t-1}; zeros otherwise).
  """
  vocab: int
  embed_dim: int
  hidden: int
  num_layers: int = 1
  cell: str = "gru"
  attention: str = "bahdanau"
  dropout: float = 0.0

  def setup(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}.")
    self.embed = nn.Embed(self.vocab, self.embed_dim)
    self.cells = [make_cell(self.cell, self.hidden) for _ in range(self.num_layers)]
    self.drop = nn.Dropout(self.dropout)
    if self.attention == "bahdanau":
      self.attn = AdditiveAttention(self.hidden, project_keys=False)  # keys come projected
    elif self.attention.startswith("luong"):
      self.attn = LuongAttention(self.attention[len("luong_"):], hidden=self.hidden)
      self.combine = nn.Dense(self.hidden, use_bias=False)
    self.out = nn.Dense(self.vocab)

  def __call__(self, state: dict, token: jax.Array, memory: jax.Array, keys: jax.Array,
               src_lens: jax.Array, context: jax.Array, deterministic: bool = True):
    """state; token [batch] previous ids; memory [batch, src_len, d_enc] encoder outputs;
    keys [batch, src_len, d_key] attention keys ('bahdanau': projected, d_key = hidden);
    src_lens [batch]; context [batch, d_enc] (C).

    Returns (state, (logits [batch, vocab], weights [batch, src_len]; zeros without attention)).
    """
    state, (feats, weights) = self.features(state, token, memory, keys, src_lens, context,
                                            deterministic)
    return state, (self.logits(feats, deterministic), weights)

  def logits(self, feats: jax.Array, deterministic: bool = True) -> jax.Array:
    """feats [..., d_out] from `features` -> logits [..., vocab]. Teacher forcing applies it
    once to every step's features (one large matmul instead of one per step)."""
    return self.out(self.drop(feats, deterministic=deterministic))

  def features(self, state: dict, token: jax.Array, memory: jax.Array, keys: jax.Array,
               src_lens: jax.Array, context: jax.Array, deterministic: bool = True):
    """As `__call__` but returns (state, (feats [batch, d_out], weights)): the inputs of the
    output layer."""
    e = self.drop(self.embed(token), deterministic=deterministic)
    carry = list(state["carry"])
    weights = jnp.zeros(memory.shape[:2], jnp.float32)
    att = self.attention
    if att == "none_context":
      x = jnp.concatenate([e, context], -1)
    elif att == "bahdanau":
      s_prev = carry_h(self.cell, carry[-1])
      ctx, w = self.attn(s_prev[:, None], keys, memory, valid_lens=src_lens, return_weights=True)
      ctx, weights = ctx[:, 0], w[:, 0]
      x = jnp.concatenate([e, ctx], -1)
    elif att.startswith("luong"):
      x = jnp.concatenate([e, state["feed"]], -1)
    else:
      x = e
    for layer, cell in enumerate(self.cells):
      if layer:
        x = self.drop(x, deterministic=deterministic)
      carry[layer], x = cell(carry[layer], x)
    feed = state["feed"]
    if att == "bahdanau":
      x = jnp.concatenate([x, ctx], -1)
    elif att.startswith("luong"):
      ctx, w = self.attn(x[:, None], keys, memory, valid_lens=src_lens, return_weights=True)
      ctx, weights = ctx[:, 0], w[:, 0]
      x = feed = jnp.tanh(self.combine(jnp.concatenate([ctx, x], -1)))
    elif att == "none_context":
      x = jnp.concatenate([x, context], -1)
    return {"carry": tuple(carry), "feed": feed}, (x, weights)
