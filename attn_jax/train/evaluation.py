"""Restore a checkpoint and report its eval metrics (accuracy; exact match and BLEU).

Classification: loss and accuracy over the whole eval split (padded, masked).
Seq2seq: teacher-forced loss / token accuracy, plus greedy decoding
(`attn_jax.seq.decoding.greedy_decode`) scored against the references with
sacrebleu's corpus BLEU on detokenized text, and the exact-match rate.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from attn_jax.train import checkpoint as ckpt_lib
from attn_jax.train import loop
from attn_jax.train import step as step_lib


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
  """sacrebleu corpus BLEU (13a tokenization) of detokenized strings, 0..100."""
  import sacrebleu
  return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def decode_and_score(model, host_state, data, max_len: int | None = None) -> dict[str, Any]:
  """Greedy-decodes the eval split -> {'bleu', 'decoded_exact_match', 'examples': [(src, hyp, ref)]}."""
  from attn_jax.seq.decoding import greedy_decode
  tok_src, tok_tgt = data.info["src_tokenizer"], data.info["tgt_tokenizer"]
  hyps, refs, srcs = [], [], []
  for batch in data.eval_batches():
    n = max_len or batch["tgt_out"].shape[1] + 4
    out = greedy_decode(model, host_state.params, batch["src"], n)
    tokens = np.asarray(out.tokens)
    for i in np.flatnonzero(batch["mask"]):
      hyps.append(tok_tgt.decode(tokens[i]))
      refs.append(tok_tgt.decode(batch["tgt_out"][i]))
      srcs.append(tok_src.decode(batch["src"][i]))
  exact = float(np.mean([h == r for h, r in zip(hyps, refs)])) if refs else 0.0
  return {"bleu": corpus_bleu(hyps, refs), "decoded_exact_match": exact,
          "examples": list(zip(srcs, hyps, refs))}


def evaluate_checkpoint(config, workdir: str, step: int | None = None,
                        decode: bool = True) -> dict[str, Any]:
  """Restores `workdir`'s checkpoint (latest, or `step`) and evaluates it on one process."""
  s = loop.setup(config, workdir)
  ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints, async_save=False)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to evaluate.")
  host_state, _, step = ckpt.restore(s["host_state"], step)
  ckpt.close()
  strategy = s["strategy"]
  eval_step = strategy.compile_eval(step_lib.make_eval_step(
      s["model"], s["family"], config.label_smoothing,
      "data" if strategy.name == "pmap" else None))
  metrics = loop.evaluate(strategy, eval_step, strategy.put_state(host_state),
                          s["data"].eval_batches())
  metrics["step"] = step
  if decode and s["family"] == "seq2seq":
    metrics.update(decode_and_score(s["model"], jax.device_get(host_state), s["data"]))
  return metrics
