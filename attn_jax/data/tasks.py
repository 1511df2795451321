"""Synthetic sequence-to-sequence tasks and a character vocabulary.

Every generator is deterministic given a seed (or a `numpy.random.Generator`) and
returns `(src, tgt, vocab)`: int32 arrays `src: [n, src_len]` (no BOS/EOS) and
`tgt: [n, tgt_len]` (the answer followed by EOS), right-padded with PAD=0 to a
fixed width that depends only on the arguments (so shapes are jit-stable). The
decoder input for teacher forcing is `shift_right(tgt)` (BOS, then tgt[:-1]).

    src, tgt, vocab = date_task(1000, seed=0)
    vocab.decode(src[0]), vocab.decode(tgt[0])   # ('21 November 2026', '2026-11-21')
"""
from __future__ import annotations

import datetime
import string
from typing import Callable, Sequence

import numpy as np

from attn_jax.tokens import BOS, EOS, PAD

SPECIALS = ("<pad>", "<bos>", "<eos>")   # CharVocab's display names of ids 0-2


class CharVocab:
  """Characters <-> ids. Ids 0, 1, 2 are PAD, BOS, EOS; characters follow in the given order.

  Args:
    chars: the characters (each one symbol); duplicates are not allowed.
  """

  def __init__(self, chars: Sequence[str]):
    chars = list(chars)
    if len(set(chars)) != len(chars):
      raise ValueError("CharVocab: duplicate characters.")
    self.itos = list(SPECIALS) + chars
    self.stoi = {c: i for i, c in enumerate(self.itos)}

  def __len__(self) -> int:
    return len(self.itos)

  @property
  def size(self) -> int:
    """Number of ids (specials included); the embedding / output width."""
    return len(self.itos)

  def encode(self, text: str | Sequence[str], add_eos: bool = False) -> list[int]:
    """String (or sequence of symbols) -> ids, optionally followed by EOS."""
    try:
      ids = [self.stoi[c] for c in text]
    except KeyError as e:
      raise ValueError(f"CharVocab.encode: {e.args[0]!r} is not in the vocabulary.") from None
    return ids + [EOS] if add_eos else ids

  def decode(self, ids: Sequence[int] | np.ndarray, sep: str = "") -> str:
    """Ids -> string; stops at the first EOS, skips PAD and BOS."""
    out = []
    for i in np.asarray(ids).tolist():
      if i == EOS:
        break
      if i in (PAD, BOS):
        continue
      out.append(self.itos[i])
    return sep.join(out)

  def encode_batch(self, texts: Sequence[str | Sequence[str]], width: int,
                   add_eos: bool = False) -> np.ndarray:
    """Encodes and right-pads with PAD to `width`: int32 [len(texts), width]."""
    out = np.zeros((len(texts), width), np.int32)
    for r, t in enumerate(texts):
      ids = self.encode(t, add_eos)
      if len(ids) > width:
        raise ValueError(f"CharVocab.encode_batch: {t!r} needs {len(ids)} > width={width} ids.")
      out[r, :len(ids)] = ids
    return out

  def decode_batch(self, ids: np.ndarray, sep: str = "") -> list[str]:
    """[n, len] ids -> n strings."""
    return [self.decode(row, sep) for row in np.asarray(ids)]


def shift_right(tgt: np.ndarray, bos_id: int = BOS) -> np.ndarray:
  """Decoder input for teacher forcing: [n, len] -> [n, len] = BOS, tgt[:, :-1]."""
  tgt = np.asarray(tgt)
  out = np.full_like(tgt, bos_id)
  out[:, 1:] = tgt[:, :-1]
  return out


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
  return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def symbol_vocab(num_symbols: int) -> CharVocab:
  """Vocabulary of the first `num_symbols` lowercase letters (ids 3 .. 3 + num_symbols - 1)."""
  if not 1 <= num_symbols <= 26:
    raise ValueError(f"symbol_vocab: num_symbols must be in [1, 26], got {num_symbols}.")
  return CharVocab(string.ascii_lowercase[:num_symbols])


def _symbol_task(transform: Callable[[np.ndarray], np.ndarray], n: int,
                 seed: int | np.random.Generator, min_len: int, max_len: int,
                 num_symbols: int):
  if not 1 <= min_len <= max_len:
    raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}.")
  rng = _rng(seed)
  vocab = symbol_vocab(num_symbols)
  lens = rng.integers(min_len, max_len + 1, size=n)
  syms = rng.integers(3, 3 + num_symbols, size=(n, max_len))
  src = np.zeros((n, max_len), np.int32)
  tgt = np.zeros((n, max_len + 1), np.int32)
  for r, length in enumerate(lens):
    x = syms[r, :length]
    src[r, :length] = x
    tgt[r, :length] = transform(x)
    tgt[r, length] = EOS
  return src, tgt, vocab


def reverse_task(n: int, seed: int | np.random.Generator = 0, min_len: int = 3,
                 max_len: int = 8, num_symbols: int = 10):
  """Reverse a random symbol string: 'abc' -> 'cba'.

  Output position i copies input position len - 1 - i, so a good attention map is an
  anti-diagonal.

  Args:
    n: number of examples.
    seed: an int seed or a `numpy.random.Generator`.
    min_len: shortest string.
    max_len: longest string (the width of src).
    num_symbols: alphabet size (the first `num_symbols` lowercase letters).

  Returns:
    (src [n, max_len], tgt [n, max_len + 1], vocab): int32, PAD-padded; tgt ends in EOS.
  """
  return _symbol_task(lambda x: x[::-1], n, seed, min_len, max_len, num_symbols)


def copy_task(n: int, seed: int | np.random.Generator = 0, min_len: int = 3,
              max_len: int = 8, num_symbols: int = 10):
  """Copy a random symbol string. Returns (src [n, max_len], tgt [n, max_len + 1], vocab)."""
  return _symbol_task(lambda x: x, n, seed, min_len, max_len, num_symbols)


def sort_task(n: int, seed: int | np.random.Generator = 0, min_len: int = 3,
              max_len: int = 8, num_symbols: int = 10):
  """Sort a random symbol string: 'cab' -> 'abc'.

  Returns (src [n, max_len], tgt [n, max_len + 1], vocab).
  """
  return _symbol_task(np.sort, n, seed, min_len, max_len, num_symbols)


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
DATE_CHARS = string.ascii_letters + string.digits + " ,-/."
# Input formats of the date task (strftime-like, filled in by `format_date`).
DATE_FORMATS = ("{d} {Month} {Y}",       # 21 November 2026
                "{Month} {d}, {Y}",      # November 21, 2026
                "{d} {Mon} {Y}",         # 21 Nov 2026
                "{Mon} {d} {Y}",         # Nov 21 2026
                "{dd}/{mm}/{Y}",         # 21/11/2026
                "{dd}.{mm}.{Y}",         # 21.11.2026
                "{d} {month} {Y}",       # 21 november 2026
                "{Weekday} {d} {Month} {Y}")  # Saturday 21 November 2026
DATE_SRC_LEN = 32   # longest: 'Wednesday 30 September 2026' = 27 chars
DATE_TGT_LEN = 11   # 'YYYY-MM-DD' + EOS


def date_vocab() -> CharVocab:
  """Character vocabulary of the date task: letters, digits, ' ,-/.' (70 ids with specials)."""
  return CharVocab(DATE_CHARS)


def format_date(date: datetime.date, fmt: str) -> str:
  """Renders `date` with one of `DATE_FORMATS` (e.g. '{d} {Month} {Y}' -> '21 November 2026')."""
  month = MONTHS[date.month - 1]
  return fmt.format(d=date.day, dd=f"{date.day:02d}", mm=f"{date.month:02d}", Y=date.year,
                    Month=month, Mon=month[:3], month=month.lower(),
                    Weekday=date.strftime("%A"))


def date_task(n: int, seed: int | np.random.Generator = 0, formats: Sequence[str] = DATE_FORMATS,
              start: datetime.date = datetime.date(1950, 1, 1),
              end: datetime.date = datetime.date(2049, 12, 31)):
  """Date normalization: '21 November 2026' -> '2026-11-21' (ISO 8601).

  Dates are uniform over [start, end]; each example uses a uniformly chosen format from
  `formats`. Both sides use `date_vocab()`.

  Args:
    n: number of examples.
    seed: an int seed or a `numpy.random.Generator`.
    formats: input formats to draw from (see `DATE_FORMATS`).
    start: first date.
    end: last date.

  Returns:
    (src [n, DATE_SRC_LEN], tgt [n, DATE_TGT_LEN], vocab) int32, PAD-padded; tgt ends in EOS.
  """
  rng = _rng(seed)
  vocab = date_vocab()
  days = rng.integers(start.toordinal(), end.toordinal() + 1, size=n)
  which = rng.integers(0, len(formats), size=n)
  dates = [datetime.date.fromordinal(int(o)) for o in days]
  src_text = [format_date(d, formats[w]) for d, w in zip(dates, which)]
  tgt_text = [d.isoformat() for d in dates]
  src = vocab.encode_batch(src_text, DATE_SRC_LEN)
  tgt = vocab.encode_batch(tgt_text, DATE_TGT_LEN, add_eos=True)
  return src, tgt, vocab


TASKS = {"reverse": reverse_task, "copy": copy_task, "sort": sort_task, "date": date_task}


def get_task(name: str, n: int, seed: int | np.random.Generator = 0, **kwargs):
  """Task by name ('reverse' | 'copy' | 'sort' | 'date') -> (src, tgt, vocab)."""
  if name not in TASKS:
    raise ValueError(f"get_task: unknown task {name!r}; expected one of {sorted(TASKS)}.")
  return TASKS[name](n, seed, **kwargs)
