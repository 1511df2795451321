"""Language-model examples: sentences -> fixed-length rows, packed or one per row.

Each sentence of token ids `t` becomes the pair inputs = [BOS] + t, targets = t + [EOS]
(so no target ever crosses into the next sentence). `pack_rows` lays pairs end to end
into rows of `length` tokens:

  inputs       [rows, length] int32   PAD (0) after the last segment
  targets      [rows, length] int32   PAD where there is no target
  segment_ids  [rows, length] int32   1, 2, ... per sentence within its row; 0 = padding
  positions    [rows, length] int32   0, 1, ... restarting at each segment

`pack_pairs` does the same for sequence-to-sequence pairs: pair k of a row is segment k
on both sides (src = s + [EOS], tgt_in = [BOS] + t, tgt_out = t + [EOS]), so the decoder's
cross-attention can be limited to its own source sentence.

A model that attends only within a segment (`segment_ids`) and numbers positions per
segment (`positions`) computes the same per-token loss on a packed row as on the sentences
padded one per row (`pack=False`); packing only removes the padding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from attn_jax.tokens import BOS, EOS, PAD

FIELDS = ("inputs", "targets", "segment_ids", "positions")


def lm_pairs(token_ids: Sequence[Sequence[int]], length: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Sentences -> (inputs, targets) pairs, each cut to at most `length` tokens.

  Args:
    token_ids: sentences, each a sequence of token ids (no BOS / EOS).
    length: the row length.

  Returns:
    [(inputs [n_i], targets [n_i])] int32 with n_i <= length: inputs = [BOS] + t,
    targets = t + [EOS].
  """
  if length < 2:
    raise ValueError(f"lm_pairs: length must be >= 2, got {length}.")
  pairs = []
  for t in token_ids:
    t = np.asarray(t, np.int32)[:length - 1]
    pairs.append((np.concatenate([[BOS], t]).astype(np.int32),
                  np.concatenate([t, [EOS]]).astype(np.int32)))
  return pairs


def pack_rows(pairs: Sequence[tuple[np.ndarray, np.ndarray]], length: int,
              pack: bool = True) -> dict[str, np.ndarray]:
  """(inputs, targets) pairs of <= `length` tokens -> rows (see the module docstring).

  Args:
    pairs: from `lm_pairs`.
    length: the row length.
    pack: lay pairs end to end in order, opening a new row when the next pair does not
      fit (sentences are never split); False puts one pair per row.

  Returns:
    {'inputs', 'targets', 'segment_ids', 'positions'}: int32 [rows, length] each.
  """
  rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
  used = length + 1
  for pair in pairs:
    n = len(pair[0])
    if n > length:
      raise ValueError(f"pack_rows: a pair has {n} tokens, more than length={length}.")
    if not pack or used + n > length:
      rows.append([])
      used = 0
    rows[-1].append(pair)
    used += n
  out = {k: np.full((len(rows), length), PAD, np.int32) for k in FIELDS}   # PAD = 0: no segment
  for r, row in enumerate(rows):
    at = 0
    for seg, (inp, tgt) in enumerate(row, start=1):
      n = len(inp)
      out["inputs"][r, at:at + n] = inp
      out["targets"][r, at:at + n] = tgt
      out["segment_ids"][r, at:at + n] = seg
      out["positions"][r, at:at + n] = np.arange(n)
      at += n
  return out


PAIR_FIELDS = ("src", "tgt_in", "tgt_out", "src_segments", "tgt_segments", "src_positions",
               "tgt_positions")


def pack_pairs(examples: Sequence[dict], src_len: int, tgt_len: int) -> dict[str, np.ndarray]:
  """Sequence-to-sequence pairs -> packed rows on both sides.

  Pairs longer than a row are cut (as the padded batches cut them); a pair opens a new row
  when either side would overflow.

  Args:
    examples: [{'src': ids, 'tgt': ids}] without BOS / EOS.
    src_len: source row length.
    tgt_len: target row length.

  Returns:
    The fields `PAIR_FIELDS`, int32: 'src', 'src_segments', 'src_positions'
    [rows, src_len]; 'tgt_in', 'tgt_out', 'tgt_segments', 'tgt_positions' [rows, tgt_len].
  """
  rows: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
  used = (src_len + 1, tgt_len + 1)
  for ex in examples:
    src = np.concatenate([np.asarray(ex["src"], np.int32)[:src_len - 1], [EOS]])
    tgt = np.asarray(ex["tgt"], np.int32)[:tgt_len - 1]
    tin, tout = np.concatenate([[BOS], tgt]), np.concatenate([tgt, [EOS]])
    if used[0] + len(src) > src_len or used[1] + len(tin) > tgt_len:
      rows.append([])
      used = (0, 0)
    rows[-1].append((src.astype(np.int32), tin.astype(np.int32), tout.astype(np.int32)))
    used = (used[0] + len(src), used[1] + len(tin))
  n = len(rows)
  out = {k: np.zeros((n, src_len if k.startswith("src") else tgt_len), np.int32)
         for k in PAIR_FIELDS}
  for r, row in enumerate(rows):
    a = b = 0
    for seg, (src, tin, tout) in enumerate(row, start=1):
      out["src"][r, a:a + len(src)] = src
      out["src_segments"][r, a:a + len(src)] = seg
      out["src_positions"][r, a:a + len(src)] = np.arange(len(src))
      out["tgt_in"][r, b:b + len(tin)] = tin
      out["tgt_out"][r, b:b + len(tin)] = tout
      out["tgt_segments"][r, b:b + len(tin)] = seg
      out["tgt_positions"][r, b:b + len(tin)] = np.arange(len(tin))
      a, b = a + len(src), b + len(tin)
  return out


def rows_as_examples(rows: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  """Column arrays -> one example dict per row (what the grain pipeline samples).

  Args:
    rows: {field: [rows, length]} (from `pack_rows` / `pack_pairs`).

  Returns:
    [{field: [length]}], one dict per row.
  """
  n = len(next(iter(rows.values())))
  return [{k: v[i] for k, v in rows.items()} for i in range(n)]


def fill_rate(rows: dict[str, np.ndarray]) -> float:
  """Fraction of the row slots that hold a real token.

  Args:
    rows: from `pack_rows` (needs 'segment_ids' [rows, length]).

  Returns:
    A float in [0, 1].
  """
  return float((rows["segment_ids"] > 0).mean()) if rows["segment_ids"].size else 0.0
