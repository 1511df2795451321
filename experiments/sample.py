r"""Sample text from a trained language model (`config.model.name='lm'`).

    python -m experiments.sample --workdir runs/m30k_lm --num=5 --temperature=0.8 --top_p=0.95

Restores the latest checkpoint (or --step / --best) with the run's own config
(`<workdir>/config.json`), continues `--prompt` (default: an empty sentence) with the
KV-cache sampler of `attn_jax.seq.sampling` and prints one sample a line; they are also
written to `<workdir>/samples.json` with the settings.
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from attn_jax.train import cli, runconfig
from attn_jax.train.metrics import command_line

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "multi30k_lm.py")


def define_flags() -> None:
  """Defines the flags (when run as a script, after `cli.run` has checked argv)."""
  global _CONFIG, _WORKDIR, _STEP, _BEST, _NUM, _LEN, _PROMPT, _T, _K, _P, _SEED
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", "runs/m30k_lm", "Workdir holding checkpoints/.")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  _BEST = flags.DEFINE_bool("best", False, "Use the best checkpoint (config.best_metric).")
  _NUM = flags.DEFINE_integer("num", 5, "Number of samples.")
  _LEN = flags.DEFINE_integer("max_new_tokens", 120, "Tokens to generate per sample.")
  _PROMPT = flags.DEFINE_string("prompt", "", "Text the samples continue.")
  _T = flags.DEFINE_float("temperature", 0.8, "Softmax temperature (0 = greedy).")
  _K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
  _P = flags.DEFINE_float("top_p", 0.95, "Nucleus sampling mass (1 = all).")
  _SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attn_jax.analysis.evaluation import restore
  from attn_jax.seq.sampling import sample
  from attn_jax.tokens import BOS
  config = runconfig.resolve(_CONFIG.value, _WORKDIR.value)
  if config.model.name != "lm":
    raise app.UsageError(f"--workdir {_WORKDIR.value} holds a '{config.model.name}' model; "
                         "sampling needs config.model.name='lm'.")
  s, state, step = restore(config, _WORKDIR.value, _STEP.value, _BEST.value)
  tok = s.data.info["tokenizer"]
  prompt_ids = [BOS] + tok.encode(_PROMPT.value)
  prompt = jnp.asarray(np.tile(prompt_ids, (_NUM.value, 1)), jnp.int32)
  room = config.model.get("max_len", 1024) - len(prompt_ids)
  out = sample(s.model, jax.device_get(state).params, prompt, min(_LEN.value, room),
               jax.random.key(_SEED.value), temperature=_T.value, top_k=_K.value,
               top_p=_P.value)
  texts = [_PROMPT.value + tok.decode(np.asarray(row)[len(prompt_ids):]) for row in out.tokens]
  for t in texts:
    print(t)
  record = {"step": step, "prompt": _PROMPT.value, "temperature": _T.value, "top_k": _K.value,
            "top_p": _P.value, "seed": _SEED.value, "samples": texts,
            "command": command_line()}
  with open(os.path.join(_WORKDIR.value, "samples.json"), "w") as f:
    json.dump(record, f, indent=1)


if __name__ == "__main__":
  cli.run(main, _DEFAULT_CONFIG, define_flags)
