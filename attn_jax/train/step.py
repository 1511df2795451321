"""Train state and the pure train / eval step functions.

The steps work on one shard of the global batch and return *sums* (loss, correct,
weight); with `axis_name` (pmap) the sums and gradients are `psum`-ed over devices,
and the loss is divided by the global weight, so pmap and jit (where the shard is
the whole global array and XLA inserts the collectives) compute the same numbers.
What a batch means (inputs, loss, metrics) is the `Task`'s business.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attn_jax.train.tasks import Batch, Task


@flax.struct.dataclass
class TrainState:
  """step: int32 []; params / model_state (e.g. {'batch_stats': ...}) pytrees;
  opt_state: optax state; rng: uint32 [2] (dropout keys are `fold_in(rng, step)`)."""
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array


def make_init_fn(model: nn.Module, task: Task, tx: optax.GradientTransformation,
                 batch: Batch, seed: int) -> Callable[[], TrainState]:
  """A pure `() -> TrainState` that initialises the model on (the shapes of) one example of
  `batch` and the optimizer. `jax.eval_shape` of it gives the state's shapes; jitting it
  with `out_shardings` creates the state directly on the devices."""
  sample = jax.tree.map(lambda x: jnp.zeros((1,) + x.shape[1:], x.dtype), batch)
  sample = {k: v for k, v in sample.items() if k != "mask"}

  def init() -> TrainState:
    init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
    variables = dict(model.init({"params": init_rng, "dropout": init_rng},
                                *task.inputs(sample), train=False))
    params = variables.pop("params")
    variables.pop("intermediates", None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=variables, rng=rng)

  return init


def init_state(model: nn.Module, task: Task, tx: optax.GradientTransformation, batch: Batch,
               seed: int) -> TrainState:
  """The train state on the default device (one compiled program, not hundreds of eager
  initialiser ops). The runner creates it on the mesh instead (`parallel`).

  Args:
    model: the Flax module.
    task: how a batch feeds it (`attn_jax.train.tasks`).
    tx: the optax optimizer.
    batch: a batch (its shapes: one example of it initialises the model).
    seed: the PRNG seed of the init and of the dropout keys.

  Returns:
    The `TrainState` (step 0).
  """
  return jax.jit(make_init_fn(model, task, tx, batch, seed))()


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def forward(model: nn.Module, task: Task, params, model_state, batch: Batch, rng, train: bool):
  """Logits and the updated model state (batch stats when training).

  Args:
    model: the Flax module.
    task: how the batch feeds it.
    params: the model's params.
    model_state: its other collections (e.g. {'batch_stats': ...}; {} if none).
    batch: e.g. {'image': [b, h, w, c], 'label': [b]} (see `attn_jax.train.tasks`).
    rng: the dropout key (when `train`).
    train: training mode (dropout, batch statistics).

  Returns:
    (logits float32, e.g. [b, classes] or [b, T, vocab]; the model state).
  """
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if train else {}
  mutable = list(model_state.keys()) if train and model_state else False
  out = task.apply(model, variables, batch, train=train, rngs=rngs, mutable=mutable)
  if mutable:
    logits, new_state = out
    return logits, {**model_state, **new_state}
  return out, model_state


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


def make_train_step(model: nn.Module, task: Task, tx: optax.GradientTransformation,
                    schedule: Callable, label_smoothing: float, accum: int = 1,
                    axis_name: str | None = None,
                    constrain_params: Callable[[Any], Any] | None = None):
  """Returns `train_step(state, batch) -> (state, metrics)` (metrics: scalars).

  `constrain_params(params)`, applied where the forward pass reads the parameters, lays
  them out for the computation (FSDP: gathered; `JitStrategy.param_constraint`); the
  gradients come back in the stored layout.

  Args:
    model: the Flax module.
    task: how a batch feeds it, and its loss and metrics.
    tx: the optax optimizer.
    schedule: step -> learning rate (logged as 'learning_rate').
    label_smoothing: of the loss.
    accum: gradient accumulation steps inside `tx` (the schedule advances once per `accum`).
    axis_name: the pmap axis to reduce over (None under jit).
    constrain_params: params -> params with the computation's sharding, or None.

  Returns:
    `train_step(state, batch) -> (state, metrics)`: metrics are scalars (loss, accuracy,
    grad_norm, learning_rate, ...).
  """

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:   # a different dropout key per device
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
      if constrain_params is not None:
        params = constrain_params(params)
      logits, new_ms = forward(model, task, params, state.model_state, batch, rng, train=True)
      sums = task.metric_sums(logits, batch, label_smoothing)
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


def make_eval_step(model: nn.Module, task: Task, label_smoothing: float,
                   axis_name: str | None = None,
                   constrain_params: Callable[[Any], Any] | None = None):
  """Returns `eval_step(state, batch) -> sums` (masked; add them over batches).

  Args:
    model: the Flax module.
    task: how a batch feeds it.
    label_smoothing: of the reported loss.
    axis_name: the pmap axis to reduce over (None under jit).
    constrain_params: params -> params with the computation's sharding, or None.

  Returns:
    `eval_step(state, batch) -> {'loss_sum', 'correct', 'weight', 'examples', ...}`
    (scalars; `step.summarize` turns their totals into means).
  """

  def eval_step(state: TrainState, batch: Batch):
    params = state.params if constrain_params is None else constrain_params(state.params)
    logits, _ = forward(model, task, params, state.model_state, batch, None, train=False)
    return _psum(task.metric_sums(logits, batch, label_smoothing), axis_name)

  return eval_step
