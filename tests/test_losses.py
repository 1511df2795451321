"""Losses and metrics against float64 NumPy references and optax."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax import functional as F
from attn_jax import losses as L


def _ce_ref(logits, labels, eps, weights):
  x = np.asarray(logits, np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  v = x.shape[-1]
  target = np.eye(v)[labels] * (1 - eps) + eps / v
  nll = -(target * logp).sum(-1)
  return (nll * weights).sum() / weights.sum()


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_token_cross_entropy_masks_padding_and_smooths(eps):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(3, 7, size=(3, 5))
  targets[0, 3:] = 0
  targets[2, 1:] = 0
  got = L.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=eps)
  np.testing.assert_allclose(got, _ce_ref(logits, targets, eps, targets != 0), rtol=1e-5)
  smoothed = optax.smooth_labels(jax.nn.one_hot(targets, 7), eps)
  per_tok = optax.softmax_cross_entropy(jnp.asarray(logits), smoothed)
  np.testing.assert_allclose(got, (per_tok * (targets != 0)).sum() / (targets != 0).sum(), rtol=1e-5)
  # Changing logits at padded positions changes nothing.
  logits2 = np.where((targets == 0)[..., None], 100.0, logits)
  np.testing.assert_allclose(L.token_cross_entropy(jnp.asarray(logits2), jnp.asarray(targets), eps),
                             got, rtol=1e-6)


def test_accuracies_and_exact_match():
  targets = jnp.array([[5, 6, 2, 0], [7, 2, 0, 0], [3, 4, 5, 2]])
  preds = jnp.array([[5, 6, 2, 9], [7, 3, 0, 0], [3, 4, 5, 2]])
  logits = jax.nn.one_hot(preds, 10) * 5.0
  assert float(L.token_accuracy(logits, targets)) == pytest.approx(8 / 9)
  np.testing.assert_array_equal(L.sequence_exact_match(preds, targets, per_example=True),
                                [True, False, True])
  assert float(L.sequence_exact_match(preds, targets)) == pytest.approx(2 / 3)
  # A longer prediction is cut, a shorter one padded: [5, 6] without EOS does not match.
  assert float(L.sequence_exact_match(preds[:, :2], targets)) == 0.0
  assert float(L.sequence_exact_match(jnp.pad(preds, ((0, 0), (0, 3)), constant_values=4),
                                      targets)) == pytest.approx(2 / 3)


def test_classification_losses():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=6)
  np.testing.assert_allclose(L.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                             _ce_ref(logits, labels, 0.0, np.ones(6)), rtol=1e-5)
  np.testing.assert_allclose(L.accuracy(jnp.asarray(logits), jnp.asarray(labels)),
                             np.mean(logits.argmax(-1) == labels))
  with pytest.raises(F.ShapeError, match="labels"):
    L.cross_entropy(jnp.asarray(logits), jnp.asarray(labels[:5]))
  with pytest.raises(ValueError, match="label_smoothing"):
    L.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=1.0)
