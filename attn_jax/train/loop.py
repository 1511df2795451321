"""`train_and_evaluate(config, workdir)`: the one training loop of every experiment.

Order of work: validate the config (before anything is built or compiled), join
the other processes, build data and model, restore the latest checkpoint if the
workdir has one, then train with periodic logging, eval and checkpoints. SIGTERM or
SIGINT saves a checkpoint at the next step boundary and returns normally; NaN/Inf loss
or gradients stop the run without saving (`guards`); a failed save stops it at once.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_jax.data import pipeline, sources
from attn_jax.train import checkpoint as ckpt_lib
from attn_jax.train import config as config_lib
from attn_jax.train import guards
from attn_jax.train import metrics as metrics_lib
from attn_jax.train import models as models_lib
from attn_jax.train import optim
from attn_jax.train import parallel
from attn_jax.train import step as step_lib
from attn_jax.train.tasks import Task


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the loop (and all that evaluation needs).

  `init_fn` is the pure state initialiser: `init_state()` runs it on the mesh, and
  `abstract_state()` gives the restore target (shapes, dtypes, shardings) without
  computing anything.
  """
  config: Any
  strategy: Any
  data: sources.Data
  model: nn.Module
  task: Task
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  init_fn: Callable[[], step_lib.TrainState]

  def init_state(self) -> step_lib.TrainState:
    """The initial TrainState, created on the strategy's devices in its shardings."""
    return self.strategy.init_state(self.init_fn)

  def abstract_state(self) -> Any:
    """The TrainState's `jax.ShapeDtypeStruct`s with their shardings (a restore target)."""
    return self.strategy.abstract_state(self.init_fn)


def setup(config, workdir: str) -> Setup:
  """Validates `config`, joins the other processes and builds data, model, task, optimizer.

  Args:
    config: a run config (`attn_jax.train.config.base_config()` and a config file's keys).
    workdir: the run's folder (unused here: setup writes nothing).

  Returns:
    The `Setup`.

  Raises:
    ConfigError: an invalid config (the message names the key).
  """
  del workdir   # the workdir is the loop's; setup writes nothing
  parallel.initialize_distributed(config.distributed)
  config_lib.validate(config, jax.device_count())
  strategy = parallel.make_strategy(config.strategy, config.get("mesh"))
  data = sources.build(config, jax.process_index(), jax.process_count())
  _check_data_shapes(config, data)
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  try:
    model, task = models_lib.build_model(config.model, data.info, dtype)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from e
  if task.data_kind != data.kind:
    raise config_lib.ConfigError(
        f"config.model.name='{config.model.name}' is a {task.name} model but "
        f"config.data.source='{config.data.source}' gives {data.kind} data.")
  tx, schedule = optim.make_optimizer(config.optim, config.num_steps,
                                      freeze=config.get("freeze", ""))
  init_fn = step_lib.make_init_fn(model, task, tx, data.train.batch_at(0), config.seed)
  return Setup(config, strategy, data, model, task, tx, schedule, init_fn)


def _check_data_shapes(config, data) -> None:
  """Impossible model/data combinations that need the data to see (image vs patch size)."""
  if data.kind != "image":
    return
  h, w = data.info["image_shape"][:2]
  for key in ("patch_size",):
    p = config.model.get(key)
    if p and (h % p or w % p):
      raise config_lib.ConfigError(f"config.model.{key}={p} does not divide the image size "
                                   f"{h}x{w}.")


def _print_memory(strategy, state, train_step, data) -> None:
  """One line: per-device bytes of params, optimizer state and the compiled step (the
  compilation is the one the first step reuses)."""
  from attn_jax.train import memory
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  batch = memory.global_batch_abstract(data.train.batch_at(0), strategy.sharded,
                                       jax.process_count())
  print(memory.report(strategy, abstract, train_step, batch).line(), flush=True)


def evaluate(strategy, eval_step, state, batches: Iterator[dict[str, np.ndarray]]) -> dict:
  """Sums the masked eval sums over every batch -> means prefixed 'eval_'.

  Args:
    strategy: the run's `parallel` strategy (puts batches on the devices).
    eval_step: from `step.make_eval_step`, compiled by the strategy.
    state: the TrainState on the devices.
    batches: host batches, e.g. {'image': [b, h, w, c], 'label': [b], 'mask': [b]}.

  Returns:
    {'eval_loss', 'eval_accuracy', ... (floats), 'eval_examples'}; {} without batches.
  """
  total = None
  for batch in batches:
    sums = strategy.scalars(eval_step(state, strategy.put_batch(batch)))
    total = sums if total is None else {k: total[k] + sums[k] for k in total}
  if total is None:
    return {}
  out = {k: float(v) for k, v in step_lib.summarize(total, "eval_").items()}
  out["eval_examples"] = total["examples"]
  return out


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest readable checkpoint).

  Returns {'step', 'train': last train metrics, 'eval': last eval metrics,
  'state': the final TrainState as host numpy arrays, 'stopped': True if stopped by a
  signal, 'signal': 'SIGTERM' | 'SIGINT' | ''}. Writes `config.json`, `checkpoints/`,
  `tensorboard/`, `metrics.jsonl`, `run.json` and (seq2seq with `config.heatmap`)
  `attention.png` in `workdir`, holding `<workdir>/lock` meanwhile (`guards.run_guard`).
  Raises NonFiniteError (NaN/Inf loss or gradients), SaveError, CheckpointError,
  LockError, MismatchError, ConfigError.

  Args:
    config: a run config (e.g. a config file's `get_config()`).
    workdir: the run's folder; created if needed, resumed from if it holds checkpoints.
  """
  with guards.run_guard(config, workdir) as stop:
    return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config, workdir: str, stop) -> dict[str, Any]:
  s = setup(config, workdir)
  if stop:   # SIGTERM / SIGINT during setup: nothing written yet
    return guards.stopped_during_setup(stop, workdir)
  strategy, data, task = s.strategy, s.data, s.task
  lead = jax.process_index() == 0
  ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric,
                               config.best_mode, config.async_checkpoint)
  start = 0
  if ckpt.latest_step() is not None:   # restored straight into the state's shardings
    restored, data_state, start = ckpt.restore(s.abstract_state())
    state = strategy.from_checkpoint(restored)
    data.train.set_state(data_state)
  else:
    state = s.init_state()
    if config.get("init_from"):   # a fresh run starts from a pretrained checkpoint
      from attn_jax import pretrained
      state, _ = pretrained.init_run_state(config, s, state, verbose=lead)
  axis = "data" if strategy.name == "pmap" else None
  gather = strategy.param_constraint() if strategy.name == "jit" else None   # FSDP
  train_step = strategy.compile_train(step_lib.make_train_step(
      s.model, task, s.tx, s.schedule, config.label_smoothing,
      config.optim.grad_accum_steps, axis, gather))
  eval_step = strategy.compile_eval(step_lib.make_eval_step(
      s.model, task, config.label_smoothing, axis, gather))
  if lead and strategy.name == "jit" and not strategy.mesh_spec.is_default:
    _print_memory(strategy, state, train_step, data)
  batches = pipeline.Prefetch(data.train, strategy.put_batch, config.data.prefetch)
  writer = metrics_lib.MetricWriter(workdir, enabled=lead, resume_step=start)
  progress = metrics_lib.Progress(config.num_steps, start, config.progress, enabled=lead,
                                  every_s=config.progress_every_s)
  guard = guards.NonFiniteGuard(strategy.scalars, config.optim.skip_nonfinite,
                                ckpt.describe_last)
  record = metrics_lib.RunRecord(workdir, config, step_lib.count_params(state.params),
                                 enabled=lead)
  train_m, eval_m, step = {}, {}, start
  t_log, n_log, t0 = time.time(), 0, time.time()
  try:
    while step < config.num_steps and not stop:
      state, m = train_step(state, next(batches))   # the batch is already on the devices
      step += 1
      n_log += 1
      guard.push(step, m)   # checks the step before (done by now): no stall
      ckpt.check()          # a failed background save stops the run here
      last = step == config.num_steps
      if step % config.log_every == 0 or last or stop:
        guard.flush()
        train_m = strategy.scalars(m)
        if guard.skipped:
          train_m["skipped_steps"] = guard.skipped
        dt = max(time.time() - t_log, 1e-9)
        train_m.update(steps_per_sec=n_log / dt, examples_per_sec=n_log * config.batch_size / dt)
        writer.write(step, train_m)
        t_log, n_log = time.time(), 0
        progress.update(step, {"loss": train_m["loss"]})
      evaluated = step % config.eval_every == 0 or last
      if evaluated:
        guard.flush()
        eval_m = evaluate(strategy, eval_step, state, data.eval_batches())
        writer.write(step, eval_m)
        record.update(step, eval_m, config.best_metric, config.best_mode)
      if step % config.checkpoint_every == 0 or last or stop:
        guard.flush()       # never saves a non-finite state
        ckpt.save(step, strategy.checkpoint_state(state), batches.get_state(),
                  metrics=eval_m if evaluated else None, force=True)
  finally:
    batches.close()
    record.update(step)
    progress.close()
    ckpt.close()
    writer.close()
  final = strategy.host_state(state)
  heatmap = None
  if config.heatmap and lead and step > start:
    from attn_jax.analysis import heatmaps
    heatmap = heatmaps.save_heatmap(s.model, task, final, data, workdir)
  if lead:
    elapsed = time.time() - t0
    parts = [f"step {step}/{config.num_steps}"] + [f"{k} {v:.4g}" for k, v in
                                                  {**train_m, **eval_m}.items()
                                                  if k in ("loss", "eval_loss", "eval_accuracy",
                                                           "eval_exact_match")]
    stopped = f" (stopped by {stop.signal_name})" if stop else ""
    print(f"done: {', '.join(parts)}, {elapsed:.1f} s{stopped}; "
          f"workdir {os.path.abspath(workdir)}", flush=True)
  return {"step": step, "train": train_m, "eval": eval_m, "state": final, "stopped": bool(stop),
          "signal": stop.signal_name, "heatmap": heatmap}
