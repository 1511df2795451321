"""Restore a checkpoint and report its eval metrics (accuracy; exact match and BLEU).

Classification: loss and accuracy over the whole eval split (padded, masked).
Seq2seq: teacher-forced loss / token accuracy, plus greedy decoding
(`attn_jax.seq.decoding.greedy_decode`) scored against the references with
sacrebleu's corpus BLEU on detokenized text, and the exact-match rate.
`select_checkpoint` picks the kept checkpoint with the best decoded validation metric
(e.g. BLEU), the model-selection rule of the translation results.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from attn_jax.train import checkpoint as ckpt_lib
from attn_jax.train import runconfig
from attn_jax.train.errors import CheckpointError
from attn_jax.train import loop
from attn_jax.train import step as step_lib
from attn_jax.train.tasks import Seq2SeqTask


def corpus_bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> float:
  """sacrebleu corpus BLEU (13a tokenization) of detokenized strings, 0..100."""
  import sacrebleu
  return float(sacrebleu.corpus_bleu(hypotheses, [references], lowercase=lowercase).score)


def decode_and_score(model, host_state, data, max_len: int | None = None,
                     beam_size: int = 1) -> dict[str, Any]:
  """Decodes the eval split (greedy, or beam search with `beam_size` > 1) and scores it.

  References are the raw eval sentences when the data has them (`info['eval_text']`, text
  sources), else the decoded target ids. Returns {'bleu' (cased), 'bleu_lower',
  'decoded_exact_match', 'examples': [(src, hyp, ref)]}. Word-tokenizer output is
  lower-cased; `T.detokenize` gives it back sentence-initial capitals and each word's most
  frequent training-set form (`WordTokenizer.case`: German nouns) for the cased BLEU.
  """
  from attn_jax.data import text as T
  from attn_jax.seq.decoding import beam_search, greedy_decode
  tok_src, tok_tgt = data.info["src_tokenizer"], data.info["tgt_tokenizer"]
  raw = data.info.get("eval_text")
  hyps, refs, srcs = [], [], []
  for batch in data.eval_batches():
    n = max_len or batch["src"].shape[1] + 10   # a cap from the source, not the reference
    if beam_size > 1:
      out = beam_search(model, host_state.params, batch["src"], n, beam_size)
    else:
      out = greedy_decode(model, host_state.params, batch["src"], n)
    tokens = np.asarray(out.tokens)
    for i in np.flatnonzero(batch["mask"]):
      k = len(hyps)
      hyp = tok_tgt.decode(tokens[i])
      hyps.append(T.detokenize(hyp, tok_tgt.case) if isinstance(tok_tgt, T.WordTokenizer)
                  else hyp)
      refs.append(raw[k][1] if raw else tok_tgt.decode(batch["tgt_out"][i]))
      srcs.append(raw[k][0] if raw else tok_src.decode(batch["src"][i]))
  exact = float(np.mean([h == r for h, r in zip(hyps, refs)])) if refs else 0.0
  return {"bleu": corpus_bleu(hyps, refs), "bleu_lower": corpus_bleu(hyps, refs, lowercase=True),
          "decoded_exact_match": exact, "examples": list(zip(srcs, hyps, refs))}


def restore(config, workdir: str, step: int | None = None,
            best: bool = False) -> tuple[loop.Setup, Any, int]:
  """Builds `config` (`loop.setup`) and restores `workdir`'s checkpoint into it.

  Restores the latest checkpoint, `step`, or with `best` (and no `step`) the best one by
  `config.best_metric`. Returns (the `loop.Setup`: strategy, data, model, task, ...; the
  restored TrainState on the devices (pmap: on the host); the restored step).
  """
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise CheckpointError(f"{ckpt_dir}: no such folder; is --workdir={workdir} a training run?")
  runconfig.check(config, workdir, "evaluate")   # the model must be the one trained
  s = loop.setup(config, workdir)
  ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric,
                               config.best_mode, async_save=False)
  try:
    if ckpt.latest_step() is None:
      raise CheckpointError(f"{ckpt_dir}: no checkpoint to restore.")
    if best and step is None:
      step = ckpt.best_step()
    state, _, step = ckpt.restore(s.abstract_state(), step)
  finally:
    ckpt.close()
  return s, state, step


def evaluate_checkpoint(config, workdir: str, step: int | None = None, decode: bool = True,
                        beam_size: int = 1, best: bool = False) -> dict[str, Any]:
  """Restores `workdir`'s checkpoint (latest, `step`, or with `best` the best by
  `config.best_metric`) and evaluates it on one process on `config.data.eval_split`."""
  s, state, step = restore(config, workdir, step, best)
  strategy = s.strategy
  eval_step = strategy.compile_eval(step_lib.make_eval_step(
      s.model, s.task, config.label_smoothing, "data" if strategy.name == "pmap" else None))
  metrics = loop.evaluate(strategy, eval_step, strategy.from_checkpoint(state),
                          s.data.eval_batches())
  metrics["step"] = step
  if decode and isinstance(s.task, Seq2SeqTask):
    metrics.update(decode_and_score(s.model, jax.device_get(state), s.data,
                                    beam_size=beam_size))
  metrics["split"] = config.data.eval_split
  return metrics


def select_checkpoint(config, workdir: str, metric: str = "bleu_lower", split: str = "val",
                      beam_size: int = 1, progress=print) -> dict[str, Any]:
  """Scores every kept checkpoint of `workdir` on `split` and returns the best by `metric`.

  metric: a key of `decode_and_score` (seq2seq: 'bleu_lower', 'bleu', 'decoded_exact_match';
  higher is better) or of the teacher-forced eval ('eval_accuracy'). One setup serves all
  checkpoints. The scores are written to `<workdir>/selection_<split>.json` and reused
  while the set of checkpoints is unchanged. Returns {'metric', 'split', 'beam',
  'scores': {step: value}, 'best_step'}.
  """
  out_path = os.path.join(workdir, f"selection_{split}.json")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.eval_split = split
  runconfig.check(config, workdir, "evaluate")
  ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric,
                               config.best_mode, async_save=False)
  try:
    steps = sorted(ckpt.all_steps())
    if not steps:
      raise CheckpointError(f"{workdir}/checkpoints: no checkpoint to select from.")
    if os.path.exists(out_path):
      with open(out_path) as f:
        cached = json.load(f)
      if (cached.get("metric"), cached.get("beam"), sorted(map(int, cached.get("scores", {})))) \
          == (metric, beam_size, steps):
        return {**cached, "scores": {int(k): v for k, v in cached["scores"].items()}}
    s = loop.setup(config, workdir)
    eval_step = s.strategy.compile_eval(step_lib.make_eval_step(
        s.model, s.task, config.label_smoothing, "data" if s.strategy.name == "pmap" else None))
    scores = {}
    for step in steps:
      state, _, _ = ckpt.restore(s.abstract_state(), step)
      m = loop.evaluate(s.strategy, eval_step, s.strategy.from_checkpoint(state),
                        s.data.eval_batches())
      if isinstance(s.task, Seq2SeqTask):
        m.update(decode_and_score(s.model, jax.device_get(state), s.data, beam_size=beam_size))
      if metric not in m:
        raise KeyError(f"metric '{metric}' is not reported for this model; one of "
                       f"{sorted(k for k in m if k != 'examples')}.")
      scores[step] = float(m[metric])
      progress(f"{split} {metric} at step {step}: {scores[step]:.2f}")
  finally:
    ckpt.close()
  best = max(scores, key=lambda k: (scores[k], k))   # ties: the later checkpoint
  result = {"metric": metric, "split": split, "beam": beam_size, "scores": scores,
            "best_step": best}
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)
  return result
