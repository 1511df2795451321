"""Optimizers and learning-rate schedules from `config.optim` (optax).

Linear warmup, then cosine or linear decay to `end_lr_factor * learning_rate`;
global-norm clipping; AdamW weight decay masked off biases, norms and
position/class embeddings; gradient accumulation with `optax.MultiSteps`. With
`skip_nonfinite=n > 0` an update whose gradients hold NaN/Inf is skipped
(`optax.apply_if_finite`; the training loop stops after n in a row).
"""
from __future__ import annotations

import re

import jax
import optax

# Parameter paths that get no weight decay: biases, norm scales, embeddings of
# positions and class tokens.
_NO_DECAY = re.compile(r"(^|/)(bias|b_[a-z]+|scale|.*norm.*|.*ln.*|pos.*emb.*|posemb.*|cls.*|"
                       r"class_token|relative_position.*)($|/)", re.I)


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
  """Warmup for `cfg.warmup_steps` (linear from 0), then `cfg.schedule` to the last step."""
  lr, warm = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max(num_steps - warm, 1)
  end = lr * cfg.end_lr_factor
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_factor)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  else:
    decay = optax.constant_schedule(lr)
  if warm == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def decay_mask(params) -> object:
  """Pytree of bools: True where weight decay applies (kernels / weight matrices)."""
  def keep(path, leaf):
    name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
    return leaf.ndim > 1 and not _NO_DECAY.search(name)
  return jax.tree_util.tree_map_with_path(keep, params)


def freeze_params(opt: optax.GradientTransformation, pattern: str) -> optax.GradientTransformation:
  """`opt` for the parameters whose path ('block0/attn/W_q') does not match the regex
  `pattern` (`re.search`); the others get zero updates (no step, no weight decay)."""
  rx = re.compile(pattern)

  def labels(params):
    out = jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if rx.search("/".join(
            str(getattr(k, "key", getattr(k, "name", k))) for k in path)) else "train", params)
    if "frozen" not in jax.tree.leaves(out):
      raise ValueError(f"config.freeze={pattern!r} matches no parameter path (paths look like "
                       f"'block0/attn/W_q').")
    return out
  return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)


def make_optimizer(cfg, num_steps: int,
                   freeze: str = "") -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`config.optim` -> (optimizer, schedule). With grad_accum_steps=k the optimizer
  applies one update every k micro-steps; the schedule counts optimizer updates.
  `freeze`: a regex of parameter paths that are not trained (`freeze_params`)."""
  updates = max(num_steps // cfg.grad_accum_steps, 1)
  schedule = learning_rate_schedule(cfg, updates)
  if cfg.name == "sgd":
    opt = optax.sgd(schedule, momentum=cfg.momentum or None)
  elif cfg.name == "adam":
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
  else:
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  chain = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []
  opt = optax.chain(*chain, opt)
  if cfg.name != "adamw" and cfg.weight_decay > 0:
    opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask), opt)
  if freeze:
    opt = freeze_params(opt, freeze)
  if cfg.grad_accum_steps > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=cfg.grad_accum_steps)
  skip = cfg.get("skip_nonfinite", 0)
  if skip > 0:   # the loop stops after `skip` in a row, before apply_if_finite gives up
    opt = optax.apply_if_finite(opt, max_consecutive_errors=skip + 2)
  return opt, schedule
