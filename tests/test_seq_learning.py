"""Learning, not just shapes: tiny models trained on the reverse task for a fixed number of
steps (seconds of CPU each). Bahdanau attention and the Transformer solve it; the decoders
without attention, at the same size and steps, do measurably worse; the Bahdanau attention
map is the anti-diagonal (output i looks at input n-1-i)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax import losses as L
from attn_jax.data.tasks import reverse_task, shift_right
from attn_jax.seq import Seq2Seq, Transformer, greedy_decode

BATCH, MAX_LEN = 64, 8
TEST_SRC, TEST_TGT, VOCAB = reverse_task(300, seed=1234, min_len=3, max_len=MAX_LEN)
V = VOCAB.size


def train(model, steps: int, lr: float = 3e-3, seed: int = 0):
  """Adam with warmup + cosine decay on fresh reverse examples every step; returns params."""
  src, tgt, _ = reverse_task(BATCH * steps, seed=seed, min_len=3, max_len=MAX_LEN)
  tin = shift_right(tgt)
  params = model.init(jax.random.key(seed), src[:2], tin[:2])["params"]
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
      optax.warmup_cosine_decay_schedule(0.0, lr, 50, steps, lr * 0.05)))

  @jax.jit
  def run(params, batches):
    def step(carry, batch):
      params, opt_state = carry
      s, ti, to = batch
      loss, grads = jax.value_and_grad(
          lambda p: L.token_cross_entropy(model.apply({"params": p}, s, ti), to))(params)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), batches)
    return params, losses

  split = lambda x: jnp.asarray(x).reshape(steps, BATCH, -1)
  params, losses = run(params, (split(src), split(tin), split(tgt)))
  return params, np.asarray(losses)


def evaluate(model, params):
  """Greedy sequence accuracy on held-out strings and the fraction of output positions i
  whose attention argmax is input position n-1-i."""
  out = greedy_decode(model, params, jnp.asarray(TEST_SRC), TEST_TGT.shape[1])
  acc = float(L.sequence_exact_match(out.tokens, jnp.asarray(TEST_TGT)))
  lens = (TEST_SRC != 0).sum(1)
  am = np.asarray(out.cross_attention).argmax(-1)
  i = np.arange(MAX_LEN)[None, :]
  real = i < lens[:, None]
  diag = ((am[:, :MAX_LEN] == lens[:, None] - 1 - i) & real).sum() / real.sum()
  return acc, float(diag)


def _seq2seq(attention):
  return Seq2Seq(V, V, embed_width=32, width=64, attention=attention)


def test_bahdanau_learns_reverse_and_beats_no_attention():
  steps = 200
  results = {}
  for att in ("bahdanau", "none_context", "none_init"):
    model = _seq2seq(att)
    params, losses = train(model, steps)
    results[att] = evaluate(model, params) + (losses[-20:].mean(),)
  acc, diag, loss = results["bahdanau"]
  assert acc > 0.95, results
  assert diag > 0.90, results
  for att in ("none_context", "none_init"):  # measurably worse at equal size and steps
    assert results[att][0] < acc - 0.2, results
    assert results[att][2] > 2 * loss, results


def test_transformer_learns_reverse():
  model = Transformer(V, V, width=64, num_heads=4, mlp_dim=128, depth=2, dropout_rate=0.0,
                      max_len=16)
  params, losses = train(model, 400)
  acc, _ = evaluate(model, params)
  assert acc > 0.95, (acc, losses[-20:].mean())
  assert losses[-20:].mean() < 0.1 * losses[:20].mean()
