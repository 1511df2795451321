r"""Evaluate a trained checkpoint.

    python -m experiments.evaluate --config configs/dates_seq2seq.py --workdir runs/default

Prints the eval metrics of the latest checkpoint (or --step, or --best, or --select): loss and accuracy;
for seq2seq models also perplexity, decoded exact match and sacrebleu BLEU on detokenized text,
cased and lower-cased (greedy, or beam search with --beam=4), with a few decoded examples. The
metrics are also written to `<workdir>/eval_<split>.json` (`eval_<split>_beam<k>.json` with a
beam), which `experiments.results` reads. `--select=bleu_lower` first decodes the validation
split (greedy) with every kept checkpoint and evaluates the one with the best score
(scores in `<workdir>/selection_val.json`).
Without `--config` the run's own config (`<workdir>/config.json`) is used, plus any
`--config.<key>=` overrides (e.g. the eval split); errors print as one line and exit 2:

    python -m experiments.evaluate --config configs/multi30k_transformer.py:de_en \
        --workdir runs/m30k_tr_de_en --config.data.eval_split=test_2016_flickr --best --beam=4
    python -m experiments.evaluate --workdir runs/m30k_tr_de_en --select=bleu_lower \
        --config.data.eval_split=test_2016_flickr --beam=4
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from attn_jax.analysis.evaluation import evaluate_checkpoint, select_checkpoint
from attn_jax.train import cli, runconfig
from attn_jax.train.metrics import command_line

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "dates_seq2seq.py")


def define_flags() -> None:
  """Defines the flags (when run as a script, after `cli.run` has checked argv)."""
  global _CONFIG, _WORKDIR, _STEP, _SHOW, _BEAM, _BEST, _SELECT, _SELECT_SPLIT
  _CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Workdir holding checkpoints/.")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  _SHOW = flags.DEFINE_integer("show", 5, "Decoded examples to print (seq2seq).")
  _BEAM = flags.DEFINE_integer("beam", 1, "Beam size for seq2seq decoding (1 = greedy).")
  _BEST = flags.DEFINE_bool("best", False, "Evaluate the best checkpoint (config.best_metric).")
  _SELECT = flags.DEFINE_string("select", "", "Evaluate the kept checkpoint with the best value "
                                "of this metric on --select_split (e.g. bleu_lower; greedy).")
  _SELECT_SPLIT = flags.DEFINE_string("select_split", "val", "Split that --select scores on.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = runconfig.resolve(_CONFIG.value, _WORKDIR.value)
  step, selection = _STEP.value, None
  if _SELECT.value:
    if step is not None or _BEST.value:
      raise app.UsageError("--select picks the checkpoint; drop --step / --best.")
    selection = select_checkpoint(config, _WORKDIR.value, _SELECT.value, _SELECT_SPLIT.value)
    step = selection["best_step"]
    print(f"selected step {step} ({_SELECT_SPLIT.value} {_SELECT.value} "
          f"{selection['scores'][step]:.2f})")
  m = evaluate_checkpoint(config, _WORKDIR.value, step, beam_size=_BEAM.value,
                          best=_BEST.value)
  if selection is not None:
    m["selected_by"] = {k: selection[k] for k in ("metric", "split", "best_step")}
    m["selected_by"]["value"] = selection["scores"][step]
  examples = m.pop("examples", [])
  for src, hyp, ref in examples[:_SHOW.value]:
    print(f"{src!r} -> {hyp!r} (reference {ref!r})")
  m.update(beam=_BEAM.value, command=command_line())
  print(json.dumps(m, indent=1))
  beam = f"_beam{_BEAM.value}" if _BEAM.value > 1 else ""
  out = os.path.join(_WORKDIR.value, f"eval_{config.data.eval_split}{beam}.json")
  with open(out, "w") as f:
    json.dump({**m, "examples": examples[:50]}, f, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  cli.run(main, _DEFAULT_CONFIG, define_flags)
