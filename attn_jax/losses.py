"""Losses and metrics for sequence and classification models.

Token-level functions take logits `[batch, len, vocab]` and integer targets
`[batch, len]`; positions whose target is the padding id are left out of every
mean. Classification functions take logits `[..., classes]` and labels `[...]`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_jax.functional import _checks as C


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                  weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy with optional label smoothing.

  The smoothed target puts `1 - label_smoothing` on the label and spreads
  `label_smoothing` uniformly over all classes (as `optax.smooth_labels`).

  Args:
    logits: [..., classes].
    labels: [...] integer class ids.
    label_smoothing: in [0, 1).
    weights: optional [...] per-example weights (e.g. a 0/1 padding mask); the mean is
      `sum(w * loss) / max(sum(w), 1e-8)`.

  Returns:
    scalar float32 loss.
  """
  fn = "cross_entropy"
  C.check_rank(fn, "labels", labels, f"[...] with rank {logits.ndim - 1}", rank=logits.ndim - 1)
  if labels.shape != logits.shape[:-1]:
    C.fail(fn, "labels", labels, f"{logits.shape[:-1]} (logits without the class axis)")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"cross_entropy(): 'label_smoothing' must be in [0, 1), got {label_smoothing}.")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  if label_smoothing > 0:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
  if weights is None:
    return nll.mean()
  w = weights.astype(jnp.float32)
  return (nll * w).sum() / jnp.maximum(w.sum(), 1e-8)


def accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Fraction of argmax predictions equal to the labels (weighted mean).

  Args:
    logits: [..., classes].
    labels: [...] integer class ids.
    weights: optional [...] per-example weights.

  Returns:
    scalar float32 in [0, 1].
  """
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  if weights is None:
    return correct.mean()
  w = weights.astype(jnp.float32)
  return (correct * w).sum() / jnp.maximum(w.sum(), 1e-8)


def token_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0,
                        pad_id: int = 0) -> jax.Array:
  """Mean cross-entropy over the non-padding target tokens.

  Args:
    logits: [batch, len, vocab] decoder outputs (teacher forcing).
    targets: [batch, len] ids; positions equal to `pad_id` are ignored.
    label_smoothing: in [0, 1).
    pad_id: the padding id.

  Returns:
    scalar float32: sum of token losses / number of real tokens.
  """
  C.check_rank("token_cross_entropy", "targets", targets, "[batch, len]", rank=2)
  return cross_entropy(logits, targets, label_smoothing, weights=targets != pad_id)


def token_accuracy(logits: jax.Array, targets: jax.Array, pad_id: int = 0) -> jax.Array:
  """Fraction of non-padding target tokens predicted by the argmax of the logits.

  Args:
    logits: [batch, len, vocab].
    targets: [batch, len] ids; positions equal to `pad_id` are ignored.
    pad_id: the padding id.

  Returns:
    scalar float32 in [0, 1].
  """
  C.check_rank("token_accuracy", "targets", targets, "[batch, len]", rank=2)
  return accuracy(logits, targets, weights=targets != pad_id)


def sequence_exact_match(predictions: jax.Array, targets: jax.Array, pad_id: int = 0,
                         per_example: bool = False) -> jax.Array:
  """Fraction of sequences whose predicted tokens equal the target at every real position.

  The target's real positions are those not equal to `pad_id` (its EOS included), so a
  prediction must also end where the target ends; what follows the target's EOS is ignored.

  Args:
    predictions: [batch, pred_len] ids (argmax or decoded tokens); cut or padded with
      `pad_id` to the target length.
    targets: [batch, len] ids.
    pad_id: the padding id.
    per_example: return the [batch] bool matches instead of their mean.

  Returns:
    scalar float32 in [0, 1] (or [batch] bool).
  """
  fn = "sequence_exact_match"
  C.check_rank(fn, "targets", targets, "[batch, len]", rank=2)
  C.check_rank(fn, "predictions", predictions, "[batch, pred_len]", rank=2)
  C.check_axis(fn, "predictions", predictions, 0, targets.shape[0],
               f"[batch={targets.shape[0]}, pred_len]")
  n = targets.shape[1]
  pred = predictions[:, :n]
  if pred.shape[1] < n:
    pred = jnp.pad(pred, ((0, 0), (0, n - pred.shape[1])), constant_values=pad_id)
  real = targets != pad_id
  match = jnp.all(jnp.where(real, pred == targets, True), axis=1)
  return match if per_example else match.astype(jnp.float32).mean()
