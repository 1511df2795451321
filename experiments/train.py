r"""Train any experiment of `configs/`.

    python -m experiments.train                               # offline default (dates)
    python -m experiments.train --config configs/mnist_vit.py --workdir runs/mnist \
        --config.num_steps=2000 --config.data.source=local --config.data.path=../shared/data/mnist

Rerunning the same command in the same workdir resumes from its latest checkpoint;
`python -m experiments.train --workdir runs/mnist` alone resumes with the config saved in
`runs/mnist/config.json`. `--help` lists every config key; errors print as one line and
exit 2 (`--debug` for the traceback); SIGTERM / Ctrl-C save and stop at the next step.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from attn_jax.train import cli, runconfig
from attn_jax.train.loop import train_and_evaluate

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "dates_seq2seq.py")


def define_flags() -> None:
  """Defines the flags (when run as a script, after `cli.run` has checked argv)."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG,
                                            "Experiment config file (a get_config()).",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", "runs/default",
                                  "Checkpoints, logs and plots go here.")


__all__ = ["train_and_evaluate", "main"]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)   # orbax logs every file it writes at INFO
  config = runconfig.resolve(_CONFIG.value, _WORKDIR.value)
  result = train_and_evaluate(config, _WORKDIR.value)
  if result.get("signal") == "SIGINT":
    sys.exit(cli.EXIT_INTERRUPTED)


if __name__ == "__main__":
  cli.run(main, _DEFAULT_CONFIG, define_flags)
