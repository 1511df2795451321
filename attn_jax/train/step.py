"""Train state and the pure train / eval step functions.

The steps work on one shard of the global batch and return *sums* (loss, correct,
weight); with `axis_name` (pmap) the sums and gradients are `psum`-ed over devices,
and the loss is divided by the global weight, so pmap and jit (where the shard is
the whole global array and XLA inserts the collectives) compute the same numbers.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attn_jax import losses

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """step: int32 []; params / model_state (e.g. {'batch_stats': ...}) pytrees;
  opt_state: optax state; rng: uint32 [2] (dropout keys are `fold_in(rng, step)`)."""
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array


def init_state(model: nn.Module, family: str, tx: optax.GradientTransformation, batch: Batch,
               seed: int) -> TrainState:
  """Initialises the model on (the shapes of) one batch and the optimizer."""
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  args = _inputs(family, jax.tree.map(lambda x: x[:1], batch))
  kwargs = {"train": False} if family == "classification" else {"deterministic": True}

  @jax.jit   # one compiled program instead of hundreds of eager initialiser ops
  def init(r):
    variables = dict(model.init({"params": r, "dropout": r}, *args, **kwargs))
    params = variables.pop("params")
    variables.pop("intermediates", None)
    return params, tx.init(params), variables

  params, opt_state, model_state = init(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    model_state=model_state, rng=rng)


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def _inputs(family: str, batch: Batch) -> tuple:
  if family == "classification":
    return (batch["image"],)
  return (batch["src"], batch["tgt_in"])


def forward(model: nn.Module, family: str, params, model_state, batch: Batch, rng, train: bool):
  """Logits and the updated model state (batch stats when training)."""
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if train else {}
  mutable = list(model_state.keys()) if train and model_state else False
  if family == "classification":
    out = model.apply(variables, batch["image"], train=train, rngs=rngs, mutable=mutable)
  else:
    out = model.apply(variables, batch["src"], batch["tgt_in"], deterministic=not train, rngs=rngs,
                      mutable=mutable)
  if mutable:
    logits, new_state = out
    return logits, {**model_state, **new_state}
  return out, model_state


def metric_sums(family: str, logits: jax.Array, batch: Batch, label_smoothing: float) -> dict:
  """Sums over this shard: loss_sum, correct, weight (tokens or examples), examples, exact."""
  mask = batch.get("mask")
  if family == "classification":
    labels = batch["label"]
    w = jnp.ones(labels.shape, jnp.float32) if mask is None else mask
    n = w.sum()
    sums = {"loss_sum": losses.cross_entropy(logits, labels, label_smoothing, weights=w) * n,
            "correct": losses.accuracy(logits, labels, weights=w) * n, "weight": n, "examples": n}
    return sums
  targets = batch["tgt_out"]
  ex_w = jnp.ones(targets.shape[:1], jnp.float32) if mask is None else mask
  w = (targets != 0).astype(jnp.float32) * ex_w[:, None]
  n = w.sum()
  exact = losses.sequence_exact_match(jnp.argmax(logits, -1), targets, per_example=True)
  loss_sum = losses.cross_entropy(logits, targets, label_smoothing, weights=w) * n
  # nll_sum: unsmoothed cross-entropy, for perplexity; a second pass only if the loss is smoothed.
  nll_sum = (losses.cross_entropy(logits, targets, 0.0, weights=w) * n if label_smoothing
             else loss_sum)
  return {"loss_sum": loss_sum, "nll_sum": nll_sum,
          "correct": losses.accuracy(logits, targets, weights=w) * n, "weight": n,
          "examples": ex_w.sum(), "exact": (exact.astype(jnp.float32) * ex_w).sum()}


def _psum(tree, axis_name):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def summarize(sums: dict, prefix: str = "") -> dict:
  """Sums -> means: loss, accuracy (token accuracy for seq2seq), exact_match, perplexity
  (exp of the unsmoothed per-token cross-entropy)."""
  w = jnp.maximum(sums["weight"], 1e-8)
  out = {f"{prefix}loss": sums["loss_sum"] / w, f"{prefix}accuracy": sums["correct"] / w}
  if "nll_sum" in sums:
    out[f"{prefix}perplexity"] = jnp.exp(sums["nll_sum"] / w)
  if "exact" in sums:
    out[f"{prefix}exact_match"] = sums["exact"] / jnp.maximum(sums["examples"], 1e-8)
  return out


def make_train_step(model: nn.Module, family: str, tx: optax.GradientTransformation,
                    schedule: Callable, label_smoothing: float, accum: int = 1,
                    axis_name: str | None = None):
  """Returns `train_step(state, batch) -> (state, metrics)` (metrics: scalars)."""

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:   # a different dropout key per device
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
      logits, new_ms = forward(model, family, params, state.model_state, batch, rng, train=True)
      sums = metric_sums(family, logits, batch, label_smoothing)
      total = jax.lax.stop_gradient(_psum(sums["weight"], axis_name))
      return sums["loss_sum"] / jnp.maximum(total, 1e-8), (sums, new_ms)

    grads, (sums, new_ms) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads, sums = _psum(grads, axis_name), _psum(sums, axis_name)
    if axis_name is not None and new_ms:
      new_ms = jax.lax.pmean(new_ms, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = summarize(sums)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step // accum)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=new_ms)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, family: str, label_smoothing: float,
                   axis_name: str | None = None):
  """Returns `eval_step(state, batch) -> sums` (masked; add them over batches)."""

  def eval_step(state: TrainState, batch: Batch):
    logits, _ = forward(model, family, state.params, state.model_state, batch, None, train=False)
    return _psum(metric_sums(family, logits, batch, label_smoothing), axis_name)

  return eval_step
