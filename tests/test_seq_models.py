"""Seq2Seq and Transformer: cached/step-wise decoding equals teacher forcing, padding
never changes a result, attention maps are sown, bad configs fail loudly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.data.tasks import reverse_task, shift_right
from attn_jax.seq import ATTENTIONS, Seq2Seq, Transformer

SRC, TGT, VOCAB = reverse_task(3, seed=0, min_len=3, max_len=7)
TIN = jnp.asarray(shift_right(TGT))
SRC = jnp.asarray(SRC)
V = VOCAB.size

# Alternate GRU / unidirectional and LSTM / bidirectional; the last one has 2 layers.
RNN_CONFIGS = [(att, *(("gru", False, 1), ("lstm", True, 1))[i % 2])
               for i, att in enumerate(ATTENTIONS[:-1])] + [(ATTENTIONS[-1], "lstm", True, 2)]
TRANSFORMER_CONFIGS = [(False, "sinusoidal", "relu", False), (True, "learned", "gelu", True)]


def _seq2seq(att, cell, bi, layers):
  return Seq2Seq(V, V, embed_width=12, width=16, depth=layers, cell=cell, bidirectional=bi,
                 attention=att, dropout_rate=0.1)


def _transformer(pre_ln, positions, act, share):
  return Transformer(V, V, width=16, num_heads=2, mlp_dim=32, encoder_depth=2, decoder_depth=1,
                     dropout_rate=0.1, attention_dropout_rate=0.1, pre_ln=pre_ln, activation=act, positions=positions,
                     share_embeddings=share, max_len=16)


def _stepwise(model, params, src, tin):
  """Runs decode_step over the given decoder inputs (with the cache for a Transformer)."""
  if isinstance(model, Transformer):
    model = model.clone(decode=True)
  init = jax.jit(lambda p, s: model.apply({"params": p}, s, tin.shape[1],
                                          method="init_decode_state", mutable=["cache"]))
  step = jax.jit(lambda p, c, st, tok: model.apply({"params": p, **c}, st, tok,
                                                   method="decode_step", mutable=["cache"]))
  state, cache = init(params, src)
  logits, attn = [], []
  for t in range(tin.shape[1]):
    (lg, state, w), cache = step(params, cache, state, tin[:, t])
    logits.append(lg)
    attn.append(w)
  return jnp.stack(logits, 1), jnp.stack(attn, 1)


def _models():
  return ([pytest.param(_seq2seq(*c), id="rnn-" + "-".join(map(str, c))) for c in RNN_CONFIGS]
          + [pytest.param(_transformer(*c), id="tr-" + "-".join(map(str, c)))
             for c in TRANSFORMER_CONFIGS])


@pytest.mark.parametrize("model", _models())
def test_incremental_decoding_equals_teacher_forcing(model):
  params = model.init(jax.random.key(0), SRC, TIN)["params"]
  full, inter = model.apply({"params": params}, SRC, TIN, mutable=["intermediates"])
  assert full.shape == TIN.shape + (V,)
  steps, attn = _stepwise(model, params, SRC, TIN)
  np.testing.assert_allclose(steps, full, atol=1e-5, rtol=1e-5)
  (w,) = inter["intermediates"]["cross_attention"]
  if isinstance(model, Transformer):
    assert w.shape == (3, 2, TIN.shape[1], SRC.shape[1])
    w = w.mean(1)
  np.testing.assert_allclose(attn, w, atol=1e-5)
  lens = np.asarray((SRC != 0).sum(1))
  if isinstance(model, Transformer) or not model.attention.startswith("none"):
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-5)
    pad = np.broadcast_to(np.arange(SRC.shape[1])[None, None] >= lens[:, None, None], w.shape)
    assert np.all(np.asarray(w)[pad] == 0)


@pytest.mark.parametrize("model", _models())
def test_padding_never_changes_a_result(model):
  params = model.init(jax.random.key(0), SRC, TIN)["params"]
  extra = 5
  src_long = jnp.pad(SRC, ((0, 0), (0, extra)))
  tin_long = jnp.pad(TIN, ((0, 0), (0, extra)))
  run = lambda s, t: jax.jit(model.apply, static_argnames="mutable")(
      {"params": params}, s, t, mutable=("intermediates",))
  a, ia = run(SRC, TIN)
  b, ib = run(src_long, tin_long)
  np.testing.assert_allclose(b[:, :TIN.shape[1]], a, atol=1e-5, rtol=1e-5)
  (wa,), (wb,) = ia["intermediates"]["cross_attention"], ib["intermediates"]["cross_attention"]
  np.testing.assert_allclose(wb[..., :TIN.shape[1], :SRC.shape[1]], wa, atol=1e-6)
  assert np.all(np.asarray(wb)[..., SRC.shape[1]:] == 0)


def test_dropout_is_active_when_training():
  # (train=False is what every other test here runs: the step-wise match proves it.)
  for model in (_seq2seq("bahdanau", "gru", False, 1), _transformer(False, "sinusoidal", "relu", False)):
    params = model.init(jax.random.key(0), SRC, TIN)["params"]
    run = jax.jit(lambda key: model.apply({"params": params}, SRC, TIN, train=True,
                                          rngs={"dropout": key}))
    r1, r2 = run(jax.random.key(1)), run(jax.random.key(2))
    assert r1.shape == TIN.shape + (V,) and not np.allclose(r1, r2)


def test_transformer_layer_counts_and_sown_maps():
  model = Transformer(V, V, width=16, num_heads=2, mlp_dim=32, encoder_depth=3, decoder_depth=2,
                      max_len=16)
  variables = model.init(jax.random.key(0), SRC, TIN)
  params = variables["params"]
  assert sorted(params["encoder"]) == ["layer0", "layer1", "layer2"]
  assert sorted(params["decoder"]) == ["layer0", "layer1"]
  _, inter = model.apply({"params": params}, SRC, TIN, mutable=["intermediates"])
  maps = inter["intermediates"]
  assert maps["encoder"]["layer2"]["self_attn"]["attention_weights"][0].shape == (3, 2, 7, 7)
  assert maps["decoder"]["layer1"]["cross_attn"]["attention_weights"][0].shape == (3, 2, 8, 7)


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="attention"):
    Seq2Seq(V, V, attention="luong_bogus").init(jax.random.key(0), SRC, TIN)
  with pytest.raises(ValueError, match="share_embeddings"):
    Transformer(V, V + 1, share_embeddings=True).init(jax.random.key(0), SRC, TIN)
  with pytest.raises(ValueError, match="max_len=4"):
    Transformer(V, V, max_len=4).init(jax.random.key(0), SRC, TIN)
  with pytest.raises(ValueError, match="positions"):
    Transformer(V, V, positions="rotary").init(jax.random.key(0), SRC, TIN)


def test_luong_attention_layer_scores():
  from attn_jax import functional as F
  from attn_jax.layers import LuongAttention
  q = jax.random.normal(jax.random.key(0), (2, 3, 6))
  kv = jax.random.normal(jax.random.key(1), (2, 5, 6))
  lens = jnp.array([5, 2])
  for score in ("dot", "general", "concat"):
    layer = LuongAttention(score, hidden=8)
    variables = layer.init(jax.random.key(2), q, kv, kv)
    out, w = layer.apply(variables, q, kv, kv, valid_lens=lens, return_weights=True)
    p = variables.get("params", {})
    if score == "dot":
      s = jnp.einsum("bqd,bkd->bqk", q, kv)
    elif score == "general":
      s = jnp.einsum("bqd,de,bke->bqk", q, p["W_a"], kv)
    else:  # v^T tanh(W [q; k]) with W = [W_q; W_k]
      w_full = jnp.concatenate([p["W_q"], p["W_k"]], 0)
      pairs = jnp.concatenate([jnp.broadcast_to(q[:, :, None], (2, 3, 5, 6)),
                               jnp.broadcast_to(kv[:, None], (2, 3, 5, 6))], -1)
      s = jnp.tanh(pairs @ w_full) @ p["v"]
    ref = F.masked_softmax(s, valid_lens=lens)
    np.testing.assert_allclose(w, ref, atol=1e-6)
    np.testing.assert_allclose(out, ref @ kv, atol=1e-5)
