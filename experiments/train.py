"""Train any experiment of `configs/`.

    python -m experiments.train                               # offline default (dates)
    python -m experiments.train --config configs/mnist_vit.py --workdir runs/mnist \
        --config.num_steps=2000 --config.data.source=local --config.data.path=../shared/data/mnist

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from attn_jax.train.loop import train_and_evaluate

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "dates_seq2seq.py")

_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                          "Experiment config file (a get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, logs and plots go here.")

__all__ = ["train_and_evaluate", "main"]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)   # orbax logs every file it writes at INFO
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, argv=sys.argv)
