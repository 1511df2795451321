"""Greedy and beam search: beam 1 is greedy, beam search never scores below greedy,
outputs are well-formed (EOS then PAD, attention zero after EOS)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.data.tasks import reverse_task
from attn_jax.seq import (EOS, PAD, Seq2Seq, Transformer, beam_search, greedy_decode,
                          length_penalty_factor)

SRC, TGT, VOCAB = reverse_task(16, seed=3, min_len=2, max_len=6)
SRC = jnp.asarray(SRC)
V = VOCAB.size
MAX_LEN = 7


def _init(model, scale, eos_bias: float | None = None):
  """Random weights, the output layer scaled (and EOS shifted by `eos_bias`) so some
  hypotheses end early and some do not."""
  params = model.init(jax.random.key(1), SRC, SRC)["params"]
  out = params["out"] if "out" in params else params["decoder"]["out"]
  out["kernel"] = out["kernel"] * scale
  if eos_bias is None:
    eos_bias = 1.0 if isinstance(model, Transformer) else -1.0
  out["bias"] = out["bias"].at[EOS].add(eos_bias)
  return params


# (model, output-layer scale): flat enough next-token distributions that beams matter.
MODELS = [
    pytest.param(Transformer(V, V, width=16, num_heads=2, mlp_dim=32, depth=1, max_len=16),
                 3.0, id="transformer"),
    pytest.param(Seq2Seq(V, V, embed_width=8, width=16, attention="luong_general"), 2.0,
                 id="seq2seq-luong"),
]


@functools.partial(jax.jit, static_argnums=0)
def _score(model, params, tokens, alpha):
  """Sum of log-probs of `tokens` (after BOS, up to EOS) under teacher forcing / the penalty."""
  tin = jnp.concatenate([jnp.ones_like(tokens[:, :1]), tokens[:, :-1]], 1)
  logp = jax.nn.log_softmax(model.apply({"params": params}, SRC, tin), -1)
  tok_lp = jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  ended = jnp.cumsum(tokens == EOS, 1) - (tokens == EOS)  # 1 after the first EOS
  live = ended == 0
  length = live.sum(1)
  return (jnp.where(live, tok_lp, 0).sum(1)) / length_penalty_factor(length, alpha)


@pytest.mark.parametrize("model,scale", MODELS)
def test_beam_one_is_greedy_and_beams_never_score_below_greedy(model, scale):
  params = _init(model, scale)
  for alpha in (0.0, 0.8):
    g = greedy_decode(model, params, SRC, MAX_LEN, length_penalty=alpha)
    b1 = beam_search(model, params, SRC, MAX_LEN, beam_size=1, length_penalty=alpha)
    np.testing.assert_array_equal(b1.tokens, g.tokens)
    np.testing.assert_allclose(b1.scores, g.scores, rtol=1e-5)
    np.testing.assert_allclose(b1.cross_attention, g.cross_attention, atol=1e-6)
    # The reported scores are the model's own (teacher-forced) scores of the tokens.
    np.testing.assert_allclose(g.scores, _score(model, params, g.tokens, alpha), rtol=1e-4)
    b = beam_search(model, params, SRC, MAX_LEN, beam_size=2, length_penalty=alpha)
    np.testing.assert_allclose(b.scores, _score(model, params, b.tokens, alpha), rtol=1e-4)
    assert np.all(np.asarray(b.scores) >= np.asarray(g.scores) - 1e-5)
    # The check can fail: on these inputs a wider beam finds strictly better hypotheses.
    assert np.any(np.asarray(b.scores) > np.asarray(g.scores) + 1e-3)


def test_plain_beam_search_can_fall_below_greedy_and_the_fallback_fixes_it():
  """Why `greedy_fallback` exists: beam 2 prunes the greedy path on one of these inputs."""
  model, scale = MODELS[0].values
  params = _init(model, scale)
  g = greedy_decode(model, params, SRC, MAX_LEN)
  plain = beam_search(model, params, SRC, MAX_LEN, beam_size=2, greedy_fallback=False)
  fixed = beam_search(model, params, SRC, MAX_LEN, beam_size=2)
  worse = np.asarray(plain.scores) < np.asarray(g.scores) - 1e-5
  assert worse.any()
  np.testing.assert_array_equal(np.asarray(fixed.tokens)[worse], np.asarray(g.tokens)[worse])
  np.testing.assert_array_equal(np.asarray(fixed.tokens)[~worse], np.asarray(plain.tokens)[~worse])


@pytest.mark.parametrize("model,scale", MODELS[:1])
def test_outputs_are_well_formed(model, scale):
  params = _init(model, scale, eos_bias=3.0)
  for out in (greedy_decode(model, params, SRC, MAX_LEN),
              beam_search(model, params, SRC, MAX_LEN, beam_size=2)):
    tok = np.asarray(out.tokens)
    assert tok.shape == (SRC.shape[0], MAX_LEN) and out.scores.shape == (SRC.shape[0],)
    assert out.cross_attention.shape == (SRC.shape[0], MAX_LEN, SRC.shape[1])
    after = np.cumsum(tok == EOS, 1) - (tok == EOS) > 0
    assert np.all(tok[after] == PAD) and np.all(tok[~after] != PAD)
    assert after.any() and (~after).all(1).any()  # some end early, some run to MAX_LEN
    w = np.asarray(out.cross_attention)
    np.testing.assert_allclose(w[~after].sum(-1), 1.0, rtol=1e-5)
    assert np.all(w[after] == 0)
