"""Tasks: how a batch feeds a model, its loss, its metrics and its prediction.

One small typed object per kind of problem, so the step functions, evaluation and
visualisation never branch on strings. Every model of the project is called as
`model.apply(variables, *task.inputs(batch), train=...)`.

| task | batch | model inputs | weight of the loss |
|---|---|---|---|
| `ClassificationTask` | image [b, h, w, c] f32, label [b] i32 | (image,) | 1 per example |
| `Seq2SeqTask` | src [b, S], tgt_in, tgt_out [b, T] i32 | (src, tgt_in) | 1 per target token |
| `LanguageModelTask` | inputs, targets, segment_ids, positions [b, N] i32 | (inputs, positions, segment_ids) | 1 per token in a segment |

An eval batch may carry `mask: [b]` (1 for real examples, 0 for padding rows).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from attn_jax import losses
from attn_jax.tokens import PAD

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
  """Base: subclasses say which data they train on and how."""
  name: ClassVar[str] = ""
  data_kind: ClassVar[str] = ""    # the `Data.kind` this task trains on: 'image' | 'seq'

  def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    """The model's positional inputs from a batch."""
    raise NotImplementedError

  def metric_sums(self, logits: jax.Array, batch: Batch, label_smoothing: float) -> dict:
    """Sums over this shard of the batch (masked): loss_sum, correct, weight, examples, ..."""
    raise NotImplementedError

  def predict(self, logits: jax.Array) -> jax.Array:
    """Logits -> predicted ids (classes or tokens)."""
    return jnp.argmax(logits, axis=-1)

  def apply(self, model, variables: dict, batch: Batch, *, train: bool = False,
            rngs: dict | None = None, mutable: Any = False):
    """`model.apply(variables, *inputs(batch), train=train, ...)`."""
    return model.apply(variables, *self.inputs(batch), train=train, rngs=rngs or {},
                       mutable=mutable)


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
  """Images -> one label each; metrics: loss, accuracy."""
  name: ClassVar[str] = "classification"
  data_kind: ClassVar[str] = "image"

  def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch["image"],)

  def metric_sums(self, logits: jax.Array, batch: Batch, label_smoothing: float) -> dict:
    labels, mask = batch["label"], batch.get("mask")
    w = jnp.ones(labels.shape, jnp.float32) if mask is None else mask
    n = w.sum()
    return {"loss_sum": losses.cross_entropy(logits, labels, label_smoothing, weights=w) * n,
            "correct": losses.accuracy(logits, labels, weights=w) * n, "weight": n,
            "examples": n}


def token_sums(logits: jax.Array, targets: jax.Array, w: jax.Array,
               label_smoothing: float) -> dict:
  """Per-token sums of a sequence task: loss_sum, nll_sum (unsmoothed, for perplexity; a
  second pass only if smoothed), correct, weight. logits [b, n, V]; targets, w [b, n]."""
  n = w.sum()
  loss_sum = losses.cross_entropy(logits, targets, label_smoothing, weights=w) * n
  nll_sum = (losses.cross_entropy(logits, targets, 0.0, weights=w) * n if label_smoothing
             else loss_sum)
  return {"loss_sum": loss_sum, "nll_sum": nll_sum,
          "correct": losses.accuracy(logits, targets, weights=w) * n, "weight": n}


@dataclasses.dataclass(frozen=True)
class Seq2SeqTask(Task):
  """Source tokens -> target tokens by teacher forcing; metrics: loss, token accuracy,
  perplexity (unsmoothed), exact match of the argmax sequence."""
  name: ClassVar[str] = "seq2seq"
  data_kind: ClassVar[str] = "seq"

  def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch["src"], batch["tgt_in"])

  def apply(self, model, variables: dict, batch: Batch, *, train: bool = False,
            rngs: dict | None = None, mutable: Any = False):
    """As `Task.apply`; a packed batch (`src_segments`, ...) also passes `packed=`."""
    if "src_segments" not in batch:
      return super().apply(model, variables, batch, train=train, rngs=rngs, mutable=mutable)
    from attn_jax.seq.transformer import Packing
    packed = Packing(batch["src_segments"], batch["tgt_segments"], batch["src_positions"],
                     batch["tgt_positions"])
    return model.apply(variables, *self.inputs(batch), train=train, packed=packed,
                       rngs=rngs or {}, mutable=mutable)

  def metric_sums(self, logits: jax.Array, batch: Batch, label_smoothing: float) -> dict:
    targets, mask = batch["tgt_out"], batch.get("mask")
    ex_w = jnp.ones(targets.shape[:1], jnp.float32) if mask is None else mask
    w = (targets != PAD).astype(jnp.float32) * ex_w[:, None]
    sums = token_sums(logits, targets, w, label_smoothing)
    sums["examples"] = ex_w.sum()
    if "tgt_segments" not in batch:   # a packed row holds several sentences: no exact match
      exact = losses.sequence_exact_match(self.predict(logits), targets, per_example=True)
      sums["exact"] = (exact.astype(jnp.float32) * ex_w).sum()
    return sums


@dataclasses.dataclass(frozen=True)
class LanguageModelTask(Task):
  """Next-token prediction on (packed) rows (`attn_jax.data.packing`); metrics: loss, token
  accuracy, perplexity. Slots outside every segment (segment id 0) weigh nothing."""
  name: ClassVar[str] = "lm"
  data_kind: ClassVar[str] = "lm"

  def inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch["inputs"], batch["positions"], batch["segment_ids"])

  def metric_sums(self, logits: jax.Array, batch: Batch, label_smoothing: float) -> dict:
    targets, mask = batch["targets"], batch.get("mask")
    ex_w = jnp.ones(targets.shape[:1], jnp.float32) if mask is None else mask
    w = (batch["segment_ids"] > 0).astype(jnp.float32) * ex_w[:, None]
    return {**token_sums(logits, targets, w, label_smoothing), "examples": ex_w.sum()}


CLASSIFICATION = ClassificationTask()
SEQ2SEQ = Seq2SeqTask()
LANGUAGE_MODEL = LanguageModelTask()
