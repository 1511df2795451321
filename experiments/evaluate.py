"""Evaluate a trained checkpoint.

    python -m experiments.evaluate --config configs/dates_seq2seq.py --workdir runs/default

Prints the eval metrics of the latest checkpoint (or --step): loss and accuracy; for
seq2seq models also greedy-decoded exact match and sacrebleu BLEU (on detokenized text)
with a few decoded examples.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from attn_jax.train.evaluation import evaluate_checkpoint

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "dates_seq2seq.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Workdir holding checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_SHOW = flags.DEFINE_integer("show", 5, "Decoded examples to print (seq2seq).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  m = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value)
  for src, hyp, ref in m.pop("examples", [])[:_SHOW.value]:
    print(f"{src!r} -> {hyp!r} (reference {ref!r})")
  print(json.dumps(m, indent=1))


if __name__ == "__main__":
  app.run(main, argv=sys.argv)
