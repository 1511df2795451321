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


def make_cell(cell: str, width: int, name: str | None = None, dtype: Any = None,
              param_dtype: Any = jnp.float32) -> nn.Module:
  """'gru' | 'lstm' -> a Flax recurrent cell with `width` units."""
  kw = dict(name=name, dtype=dtype, param_dtype=param_dtype)
  if cell == "gru":
    return nn.GRUCell(width, **kw)
  if cell == "lstm":
    return nn.LSTMCell(width, **kw)
  raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}.")


def zero_carry(cell: str, batch: int, width: int, dtype: Any = jnp.float32) -> Carry:
  """All-zero initial carry for a cell: h [batch, width] (GRU) or (c, h) (LSTM)."""
  h = jnp.zeros((batch, width), dtype)
  return (h, h) if cell == "lstm" else h


def carry_from_h(cell: str, h: jax.Array) -> Carry:
  """Carry whose hidden state is h [batch, width] (LSTM memory cell zero)."""
  return (jnp.zeros_like(h), h) if cell == "lstm" else h


def carry_h(cell: str, carry: Carry) -> jax.Array:
  """The hidden state h [batch, width] of a carry."""
  return carry[1] if cell == "lstm" else carry


class MaskedCell(nn.Module):
  """One step of a cell that keeps its carry (and outputs zeros) where `valid` is False."""
  cell: str
  width: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Carry, inputs: tuple[jax.Array, jax.Array]):
    """carry; inputs (x [batch, d_in], valid [batch] bool) -> (carry, y [batch, width])."""
    x, valid = inputs
    new, y = make_cell(self.cell, self.width, "cell", self.dtype, self.param_dtype)(carry, x)
    keep = lambda n, o: jnp.where(valid[:, None], n, o)
    return jax.tree.map(keep, new, carry), jnp.where(valid[:, None], y, 0.0)


def _scan_cell(reverse: bool):
  return nn.scan(MaskedCell, variable_broadcast="params", split_rngs={"params": False},
                 in_axes=1, out_axes=1, reverse=reverse)


class RNNEncoder(nn.Module):
  """Embedding + a stack of GRU/LSTM layers, optionally bidirectional.

  Attributes:
    vocab: source vocabulary size; embed_width: embedding width; width: units per direction.
    depth: stacked layers; cell: 'gru' | 'lstm'; bidirectional: run a backward pass too.
    dropout_rate: between layers (when training); dtype / param_dtype: compute / params.
  """
  vocab: int
  embed_width: int
  width: int
  depth: int = 1
  cell: str = "gru"
  bidirectional: bool = False
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, src: jax.Array, src_lens: jax.Array, train: bool = False):
    """src: [batch, src_len] ids; src_lens: [batch] valid lengths.

    Returns:
      outputs [batch, src_len, width * dirs] (top layer, zero at padding) and finals, a
      list with one [batch, width * dirs] final hidden state per layer (for the backward
      direction: its state after reading the first token).
    """
    batch, length = src.shape
    valid = jnp.arange(length)[None, :] < src_lens[:, None]
    x = nn.Embed(self.vocab, self.embed_width, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="embed")(src)
    finals = []
    for layer in range(self.depth):
      if layer:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
      outs, hs = [], []
      for d, reverse in enumerate((False, True)[: 1 + self.bidirectional]):
        c0 = zero_carry(self.cell, batch, self.width, self.dtype or jnp.float32)
        c, y = _scan_cell(reverse)(self.cell, self.width, self.dtype, self.param_dtype,
                                   name=f"l{layer}_d{d}")(c0, (x, valid))
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

  State (a dict): 'carry' (a tuple of per-layer carries) and 'feed' ([batch, width],
  Luong's h~_{t-1}; zeros otherwise).
  """
  vocab: int
  embed_width: int
  width: int
  depth: int = 1
  cell: str = "gru"
  attention: str = "bahdanau"
  dropout_rate: float = 0.0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = nn.Embed(self.vocab, self.embed_width, **kw)
    self.cells = [make_cell(self.cell, self.width, **kw) for _ in range(self.depth)]
    self.drop = nn.Dropout(self.dropout_rate)
    if self.attention == "bahdanau":
      self.attn = AdditiveAttention(self.width, project_keys=False)  # keys come projected
    elif self.attention.startswith("luong"):
      self.attn = LuongAttention(self.attention[len("luong_"):], hidden=self.width)
      self.combine = nn.Dense(self.width, use_bias=False, **kw)
    self.out = nn.Dense(self.vocab, **kw)

  def __call__(self, state: dict, token: jax.Array, memory: jax.Array, keys: jax.Array,
               src_lens: jax.Array, context: jax.Array, train: bool = False):
    """state; token [batch] previous ids; memory [batch, src_len, d_enc] encoder outputs;
    keys [batch, src_len, d_key] attention keys ('bahdanau': projected, d_key = width);
    src_lens [batch]; context [batch, d_enc] (C).

    Returns (state, (logits [batch, vocab], weights [batch, src_len]; zeros without attention)).
    """
    state, (feats, weights) = self.features(state, token, memory, keys, src_lens, context, train)
    return state, (self.logits(feats, train), weights)

  def logits(self, feats: jax.Array, train: bool = False) -> jax.Array:
    """feats [..., d_out] from `features` -> logits [..., vocab]. Teacher forcing applies it
    once to every step's features (one large matmul instead of one per step)."""
    return self.out(self.drop(feats, deterministic=not train)).astype(jnp.float32)

  def features(self, state: dict, token: jax.Array, memory: jax.Array, keys: jax.Array,
               src_lens: jax.Array, context: jax.Array, train: bool = False):
    """As `__call__` but returns (state, (feats [batch, d_out], weights)): the inputs of the
    output layer."""
    e = self.drop(self.embed(token), deterministic=not train)
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
        x = self.drop(x, deterministic=not train)
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
