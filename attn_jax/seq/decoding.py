"""Greedy and beam-search decoding with a fixed maximum length, jit-compiled.

Works with any model that has the two methods

    init_decode_state(src, max_len, src_lens=None) -> state   (a dict; leaves lead with batch)
    decode_step(state, token [batch]) -> (logits [batch, vocab], state, attn [batch, src_len])

(`Seq2Seq` and `Transformer`). A Transformer is cloned with `decode=True` so each step
reuses its key/value cache (the flax 'cache' collection travels inside the state).

    out = greedy_decode(model, params, src, max_len=12)
    out = beam_search(model, params, src, max_len=12, beam_size=4, length_penalty=0.6)
    out.tokens [batch, max_len]   ids after BOS; EOS ends a hypothesis, PAD follows it
    out.scores [batch]            sum of log-probs / length_penalty_factor(length)
    out.cross_attention [batch, max_len, src_len]   of the returned hypothesis (zero after EOS)

Scores: the length counts the tokens up to and including EOS (max_len if none);
`length_penalty_factor(n, alpha) = ((5 + n) / 6) ** alpha` (GNMT); alpha = 0 scores by the
plain sum of log-probabilities. PAD (and BOS) are never generated.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from attn_jax.tokens import BOS, EOS, PAD

NEG = -1e9  # log-prob of a forbidden move; finite so sums stay finite


@flax.struct.dataclass
class DecodeOutput:
  """What `greedy_decode` and `beam_search` return.

  Attributes:
    tokens: [batch, max_len] int32 ids after BOS; EOS ends a hypothesis, PAD follows it.
    scores: [batch] float32 sum of log-probs / `length_penalty_factor(length)`.
    cross_attention: [batch, max_len, src_len] float32 cross-attention of the returned
      hypothesis (Transformer: last decoder layer, mean over heads); zero after EOS.
  """
  tokens: jax.Array
  scores: jax.Array
  cross_attention: jax.Array


def length_penalty_factor(length: jax.Array, alpha: float | jax.Array) -> jax.Array:
  """GNMT length penalty `((5 + length) / 6) ** alpha`; scores are divided by it.

  Args:
    length: [...] int lengths (tokens up to and including EOS).
    alpha: the penalty exponent (0: no normalisation).

  Returns:
    [...] float32.
  """
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _decoder_fns(model, params, src, max_len: int, src_lens):
  """(state, step) for a model with init_decode_state/decode_step; the cache goes in the state."""
  if hasattr(model, "decode") and not model.decode:
    model = model.clone(decode=True)
  variables = {"params": params}
  state, upd = model.apply(variables, src, max_len, src_lens, method="init_decode_state",
                           mutable=["cache"])
  state = {**state, "cache": upd.get("cache", {})}

  def step(state, token):
    st = {k: v for k, v in state.items() if k != "cache"}
    (logits, st, attn), upd = model.apply({**variables, "cache": state["cache"]}, st, token,
                                          method="decode_step", mutable=["cache"])
    return logits, {**st, "cache": upd.get("cache", {})}, attn

  return state, step


def _log_probs(logits: jax.Array, finished: jax.Array) -> jax.Array:
  """log_softmax with PAD/BOS forbidden for live hypotheses and only PAD (log-prob 0)
  allowed for finished ones. logits [..., vocab], finished [...] -> [..., vocab]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  vocab = jnp.arange(logits.shape[-1])
  logp = jnp.where((vocab == PAD) | (vocab == BOS), NEG, logp)
  done = jnp.where(vocab == PAD, 0.0, NEG)
  return jnp.where(finished[..., None], done, logp)


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def greedy_decode(model: Any, params: Any, src: jax.Array, max_len: int,
                  src_lens: jax.Array | None = None, length_penalty: float = 0.0) -> DecodeOutput:
  """Argmax decoding: a `lax.scan` of exactly `max_len` steps, jit-compiled.

  Args:
    model: a module with `init_decode_state` and `decode_step` (`Seq2Seq`, `Transformer`;
      static).
    params: the model's params.
    src: [batch, src_len] int32 source ids, PAD-padded.
    max_len: output length (static).
    src_lens: [batch] source lengths (default: the non-PAD count).
    length_penalty: alpha of `length_penalty_factor` for the reported scores.

  Returns:
    `DecodeOutput`: tokens [batch, max_len], scores [batch],
    cross_attention [batch, max_len, src_len].
  """
  state, step = _decoder_fns(model, params, src, max_len, src_lens)
  batch = src.shape[0]

  def body(carry, _):
    state, token, logp_sum, length, finished = carry
    logits, state, attn = step(state, token)
    logp = _log_probs(logits, finished)
    token = jnp.argmax(logp, -1).astype(jnp.int32)
    logp_sum += jnp.take_along_axis(logp, token[:, None], -1)[:, 0]
    length += (~finished).astype(jnp.int32)
    attn = jnp.where(finished[:, None], 0.0, attn)
    finished |= token == EOS
    return (state, token, logp_sum, length, finished), (token, attn)

  init = (state, jnp.full((batch,), BOS, jnp.int32), jnp.zeros((batch,)),
          jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
  (_, _, logp_sum, length, _), (tokens, attn) = jax.lax.scan(body, init, None, length=max_len)
  scores = logp_sum / length_penalty_factor(length, length_penalty)
  return DecodeOutput(tokens.T, scores, jnp.swapaxes(attn, 0, 1))


def _select(cond: jax.Array, a, b):
  """Per-example choice between two pytrees: cond [batch] bool; leaves lead with batch."""
  return jax.tree.map(lambda x, y: jnp.where(cond.reshape((-1,) + (1,) * (x.ndim - 1)), x, y),
                      a, b)


def _gather_beams(tree, idx: jax.Array, batch: int, beam: int):
  """Reorders flattened beams: leaves [batch * beam, ...] take rows `idx` ([batch, beam]
  beam indices within each example); scalars (e.g. a cache index) pass through."""
  flat = (jnp.arange(batch)[:, None] * beam + idx).reshape(-1)
  return jax.tree.map(lambda x: x if x.ndim == 0 else x[flat], tree)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size", "greedy_fallback"))
def beam_search(model: Any, params: Any, src: jax.Array, max_len: int, beam_size: int = 4,
                length_penalty: float = 0.0, src_lens: jax.Array | None = None,
                greedy_fallback: bool = True) -> DecodeOutput:
  """Beam search over `beam_size` hypotheses per example.

  Finished hypotheses stay in the beam (they can only be extended by PAD at no cost) and
  compete with live ones on the length-normalised score; the best finished hypothesis seen
  is also kept aside, so one pushed out of the beam by live hypotheses that later score
  worse is still returned. With beam_size=1 this is exactly `greedy_decode`.

  Plain beam search can prune the greedy path and end below greedy (a search error; it
  happens with small beams, see tests/test_seq_decoding.py). With `greedy_fallback` the
  greedy hypothesis is decoded as well and returned where it scores higher, so the result
  never scores below `greedy_decode` under the same length penalty.

  Args:
    model: a module with `init_decode_state` and `decode_step` (static).
    params: the model's params.
    src: [batch, src_len] int32 source ids, PAD-padded.
    max_len: output length (static).
    beam_size: hypotheses per example (static).
    length_penalty: alpha of `length_penalty_factor` (traced).
    src_lens: [batch] source lengths (default: the non-PAD count).
    greedy_fallback: also decode greedily and keep the better-scoring result (static).

  Returns:
    `DecodeOutput` of the best hypothesis per example: tokens [batch, max_len],
    scores [batch], cross_attention [batch, max_len, src_len].
  """
  out = _beam_search(model, params, src, max_len, beam_size, length_penalty, src_lens)
  if not greedy_fallback or beam_size == 1:
    return out
  g = greedy_decode(model, params, src, max_len, src_lens, length_penalty)
  return _select(g.scores > out.scores, g, out)


def _beam_search(model, params, src, max_len, beam_size, length_penalty, src_lens):
  """The search itself (see `beam_search`)."""
  batch, k = src.shape[0], beam_size
  rep = lambda x: jnp.repeat(x, k, axis=0)
  src_rep = rep(src)
  state, step = _decoder_fns(model, params, src_rep, max_len, None if src_lens is None
                             else rep(src_lens))
  src_len = src.shape[1]

  def norm(logp, length):
    return logp / length_penalty_factor(length, length_penalty)

  def body(carry, t):
    state, seqs, attns, logp, length, finished, best = carry
    prev = jnp.where(t == 0, BOS, seqs[:, :, jnp.maximum(t - 1, 0)]).reshape(-1)
    logits, state, attn = step(state, prev)
    vocab = logits.shape[-1]
    cand = logp[:, :, None] + _log_probs(logits.reshape(batch, k, vocab), finished)
    cand_len = jnp.where(finished, length, t + 1)
    score = norm(cand, cand_len[:, :, None]).reshape(batch, k * vocab)
    _, top = jax.lax.top_k(score, k)                      # [batch, k]
    beam_idx, token = top // vocab, (top % vocab).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x, beam_idx.reshape(beam_idx.shape + (1,) * (x.ndim - 2)), 1)
    was_done = take(finished)
    logp = jnp.take_along_axis(cand.reshape(batch, k * vocab), top, 1)
    length = jnp.where(was_done, take(length), t + 1)
    finished = was_done | (token == EOS)
    seqs = take(seqs).at[:, :, t].set(token)
    attn = _gather_beams(attn, beam_idx, batch, k).reshape(batch, k, src_len)
    attns = take(attns).at[:, :, t].set(jnp.where(was_done[..., None], 0.0, attn))
    state = _gather_beams(state, beam_idx, batch, k)
    # Keep the best finished hypothesis aside.
    fin_score = jnp.where(finished, norm(logp, length), -jnp.inf)
    i = jnp.argmax(fin_score, 1)
    pick = lambda x: jnp.take_along_axis(x, i.reshape((batch,) + (1,) * (x.ndim - 1)), 1)[:, 0]
    new = (pick(fin_score), pick(seqs), pick(attns))
    best = _select(new[0] > best[0], new, best)
    return (state, seqs, attns, logp, length, finished, best), None

  logp0 = jnp.tile(jnp.array([0.0] + [NEG] * (k - 1)), (batch, 1))  # one live start per example
  best0 = (jnp.full((batch,), -jnp.inf), jnp.zeros((batch, max_len), jnp.int32),
           jnp.zeros((batch, max_len, src_len)))
  init = (state, jnp.zeros((batch, k, max_len), jnp.int32),
          jnp.zeros((batch, k, max_len, src_len)), logp0, jnp.zeros((batch, k), jnp.int32),
          jnp.zeros((batch, k), bool), best0)
  (_, seqs, attns, logp, length, _, best), _ = jax.lax.scan(body, init, jnp.arange(max_len))
  # Beam 0 is the best (top_k sorts); live hypotheses end at max_len.
  top_score = norm(logp[:, 0], length[:, 0])
  score, tokens, attn = _select(top_score >= best[0], (top_score, seqs[:, 0], attns[:, 0]), best)
  return DecodeOutput(tokens, score, attn)
