"""`train_and_evaluate(config, workdir)`: the one training loop of every experiment.

Order of work: validate the config (before anything is built or compiled), join
the other processes, build data and model, restore the latest checkpoint if the
workdir has one, then train with periodic logging, eval and checkpoints. SIGTERM
saves a checkpoint and returns normally (exit code 0).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.data import sources
from attn_jax.train import checkpoint as ckpt_lib
from attn_jax.train import config as config_lib
from attn_jax.train import metrics as metrics_lib
from attn_jax.train import models as models_lib
from attn_jax.train import optim
from attn_jax.train import parallel
from attn_jax.train import step as step_lib


def setup(config, workdir: str):
  """Everything but the loop: -> dict(strategy, data, model, family, tx, schedule, host_state)."""
  parallel.initialize_distributed(config.distributed)
  config_lib.validate(config, jax.device_count())
  strategy = parallel.make_strategy(config.strategy)
  data = sources.build(config, jax.process_index(), jax.process_count())
  _check_data_shapes(config, data)
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  model, family = models_lib.build_model(config.model, data.info, dtype)
  if (family == "classification") != (data.kind == "image"):
    raise config_lib.ConfigError(f"config.model.name='{config.model.name}' is a {family} model "
                                 f"but config.data.source='{config.data.source}' gives {data.kind} data.")
  tx, schedule = optim.make_optimizer(config.optim, config.num_steps)
  state = step_lib.init_state(model, family, tx, data.train.batch_at(0), config.seed)
  host_state = jax.device_get(state)
  return dict(strategy=strategy, data=data, model=model, family=family, tx=tx,
              schedule=schedule, host_state=host_state)


def _check_data_shapes(config, data) -> None:
  """Impossible model/data combinations that need the data to see (image vs patch size)."""
  if data.kind != "image":
    return
  h, w = data.info["image_shape"][:2]
  for key in ("patch_size",):
    p = config.model.get(key)
    if p and (h % p or w % p):
      raise config_lib.ConfigError(f"config.model.{key}={p} does not divide the image size {h}x{w}.")


def evaluate(strategy, eval_step, state, batches: Iterator[dict[str, np.ndarray]]) -> dict:
  """Sums the masked eval sums over every batch -> means prefixed 'eval_'."""
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
  """Trains `config` in `workdir` (resuming from its latest checkpoint).

  Returns {'step', 'train': last train metrics, 'eval': last eval metrics,
  'state': the final TrainState as host numpy arrays, 'stopped': True if SIGTERM}.
  Writes `checkpoints/`, `tensorboard/`, `metrics.jsonl` and (seq2seq with
  `config.heatmap`) `attention.png` in `workdir`.
  """
  s = setup(config, workdir)
  strategy, data, family = s["strategy"], s["data"], s["family"]
  lead = jax.process_index() == 0
  ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric,
                               config.best_mode, config.async_checkpoint)
  host_state, start = s["host_state"], 0
  if ckpt.latest_step() is not None:
    host_state, data_state, start = ckpt.restore(host_state)
    data.train.set_state(data_state)
  axis = "data" if strategy.name == "pmap" else None
  train_step = strategy.compile_train(step_lib.make_train_step(
      s["model"], family, s["tx"], s["schedule"], config.label_smoothing,
      config.optim.grad_accum_steps, axis))
  eval_step = strategy.compile_eval(step_lib.make_eval_step(
      s["model"], family, config.label_smoothing, axis))
  state = strategy.put_state(host_state)
  writer = metrics_lib.MetricWriter(workdir, enabled=lead)
  progress = metrics_lib.Progress(config.num_steps, start, config.progress, enabled=lead)
  record = metrics_lib.RunRecord(workdir, config, step_lib.count_params(host_state.params),
                                 enabled=lead)
  stop = ckpt_lib.StopFlag().install()
  train_m, eval_m, step = {}, {}, start
  t_log, n_log, t0 = time.time(), 0, time.time()
  try:
    while step < config.num_steps and not stop:
      state, m = train_step(state, strategy.put_batch(next(data.train)))
      step += 1
      n_log += 1
      last = step == config.num_steps
      if step % config.log_every == 0 or last or stop:
        train_m = strategy.scalars(m)
        dt = max(time.time() - t_log, 1e-9)
        train_m.update(steps_per_sec=n_log / dt, examples_per_sec=n_log * config.batch_size / dt)
        writer.write(step, train_m)
        t_log, n_log = time.time(), 0
        progress.update(step, {"loss": train_m["loss"]})
      evaluated = step % config.eval_every == 0 or last
      if evaluated:
        eval_m = evaluate(strategy, eval_step, state, data.eval_batches())
        writer.write(step, eval_m)
        record.update(step, eval_m, config.best_metric, config.best_mode)
      if step % config.checkpoint_every == 0 or last or stop:
        ckpt.save(step, strategy.host_state(state), data.train.get_state(),
                  metrics=eval_m if evaluated else None, force=True)
  finally:
    record.update(step)
    progress.close()
    ckpt.close()
    writer.close()
    stop.uninstall()
  final = strategy.host_state(state)
  heatmap = None
  if config.heatmap and lead and step > start:
    from attn_jax.train import visualize
    heatmap = visualize.save_heatmap(s["model"], family, final, data, workdir)
  if lead:
    elapsed = time.time() - t0
    parts = [f"step {step}/{config.num_steps}"] + [f"{k} {v:.4g}" for k, v in
                                                  {**train_m, **eval_m}.items()
                                                  if k in ("loss", "eval_loss", "eval_accuracy",
                                                           "eval_exact_match")]
    print(f"done: {', '.join(parts)}, {elapsed:.1f} s{' (stopped by SIGTERM)' if stop else ''}; "
          f"workdir {os.path.abspath(workdir)}", flush=True)
  return {"step": step, "train": train_m, "eval": eval_m, "state": final, "stopped": bool(stop),
          "heatmap": heatmap}
