"""Attention heatmap of a trained model on one eval example -> `<workdir>/attention.png`.

The models sow their attention weights in the 'intermediates' collection. For a
seq2seq model the map is the decoder->encoder (cross) attention of the last layer
that has shape [..., tgt_len, src_len], averaged over heads, with the tokens on
the axes; for a classifier it is the last sown self-attention map.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from attn_jax.tokens import EOS
from attn_jax.train.tasks import Seq2SeqTask, Task


MAX_HEATMAP_LEN = 2048   # tokens; longer sequences get no heatmap


def attention_maps(model, task: Task, host_state, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
  """Every sown attention array (first example, heads averaged) -> list of [q, k].

  Asks for the maps by making 'intermediates' mutable (the training path never computes
  them)."""
  variables = {"params": host_state.params, **host_state.model_state}
  first = {k: v[:1] for k, v in batch.items() if k != "mask"}
  fn = lambda v, b: task.apply(model, v, b, train=False, mutable=["intermediates"])
  _, inter = jax.jit(fn)(variables, first)
  maps = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(inter.get("intermediates", {}))[0]:
    arr = np.asarray(leaf, np.float32)
    scanned = any(str(getattr(k, "key", "")).endswith("_scan") for k in path)
    for a in (list(arr) if scanned else [arr]):   # scanned layers: a leading [depth] axis
      if a.ndim < 3:
        continue
      a = a[0]                         # first example
      while a.ndim > 2:
        a = a.mean(axis=0)             # average heads (and any extra axes)
      maps.append(a)
  return maps


def save_heatmap(model, task: Task, host_state, data, workdir: str) -> str | None:
  """Draws the heatmap of the first eval example; returns the path (None if nothing was sown)."""
  # A bare Figure (no pyplot): works headless and leaves a notebook's backend alone.
  from matplotlib.figure import Figure
  batch = next(iter(data.eval_batches()))
  longest = max((v.shape[1] for v in batch.values() if np.ndim(v) >= 2), default=0)
  if longest > MAX_HEATMAP_LEN:  # a [len, len] map per layer would not fit in memory
    print(f"attention heatmap skipped: sequences of {longest} tokens (more than "
          f"{MAX_HEATMAP_LEN}).", flush=True)
    return None
  maps = attention_maps(model, task, host_state, batch)
  if not maps:
    return None
  xlabels = ylabels = None
  if isinstance(task, Seq2SeqTask):   # tokens on the axes
    src, tgt = batch["src"][0], batch["tgt_out"][0]
    s_len, t_len = int((src != 0).sum()), int((tgt != 0).sum())
    cross = [m for m in maps if m.shape == (batch["tgt_in"].shape[1], src.shape[0])]
    a = (cross or maps)[-1][:t_len, :s_len]
    xlabels = [token_text(data.info["src_tokenizer"], i) for i in src[:s_len]]
    ylabels = [token_text(data.info["tgt_tokenizer"], i) for i in tgt[:t_len]]
  else:
    a = maps[-1]
  fig = Figure(figsize=(max(4, 0.3 * a.shape[1] + 2), max(3, 0.3 * a.shape[0] + 1.5)))
  ax = fig.subplots()
  im = ax.imshow(a, cmap="viridis", aspect="auto")
  fig.colorbar(im, ax=ax)
  if xlabels is not None:
    ax.set_xticks(range(len(xlabels)), xlabels, fontsize=7)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=7)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
  ax.set_title("attention (heads averaged)")
  path = os.path.join(workdir, "attention.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def token_text(tok: Any, i: int) -> str:
  """One id -> its text (char vocab, word list or sentencepiece)."""
  i = int(i)
  if i == EOS:
    return "</s>"
  itos = getattr(tok, "itos", None)
  if itos is not None:
    return itos[i] if i < len(itos) else "?"
  return tok.sp.id_to_piece(i)
