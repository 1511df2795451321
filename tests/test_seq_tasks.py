"""Synthetic tasks: deterministic, correctly padded, and the answers are right."""
import datetime

import numpy as np
import pytest

from attn_jax.data import tasks
from attn_jax.data.tasks import BOS, EOS, PAD, CharVocab, get_task, shift_right


@pytest.mark.parametrize("name", ["reverse", "copy", "sort", "date"])
def test_tasks_are_deterministic_and_padded(name):
  a_src, a_tgt, vocab = get_task(name, 50, seed=7)
  b_src, b_tgt, _ = get_task(name, 50, seed=np.random.default_rng(7))
  c_src, _, _ = get_task(name, 50, seed=8)
  np.testing.assert_array_equal(a_src, b_src)
  np.testing.assert_array_equal(a_tgt, b_tgt)
  assert not np.array_equal(a_src, c_src)
  assert a_src.dtype == a_tgt.dtype == np.int32
  for arr in (a_src, a_tgt):  # right padding only
    real = arr != PAD
    assert np.all(real[:, :1]) and np.all(np.diff(real.astype(int), axis=1) <= 0)
  n_eos = (a_tgt == EOS).sum(1)
  assert np.all(n_eos == 1) and not np.any(a_src == EOS) and not np.any(a_src == BOS)
  assert a_src.max() < vocab.size and a_tgt.max() < vocab.size


def test_symbol_answers():
  src, tgt, vocab = get_task("reverse", 20, seed=0, min_len=2, max_len=5, num_symbols=6)
  assert src.shape == (20, 5) and tgt.shape == (20, 6) and vocab.size == 9
  for s, t in zip(vocab.decode_batch(src), vocab.decode_batch(tgt)):
    assert t == s[::-1] and 2 <= len(s) <= 5
  src, tgt, vocab = get_task("sort", 20, seed=0)
  for s, t in zip(vocab.decode_batch(src), vocab.decode_batch(tgt)):
    assert t == "".join(sorted(s))


def test_date_task_and_formats():
  d = datetime.date(2026, 11, 21)
  assert tasks.format_date(d, "{d} {Month} {Y}") == "21 November 2026"
  assert tasks.format_date(d, "{Month} {d}, {Y}") == "November 21, 2026"
  assert tasks.format_date(d, "{dd}/{mm}/{Y}") == "21/11/2026"
  assert tasks.format_date(d, "{Weekday} {d} {Month} {Y}") == "Saturday 21 November 2026"
  src, tgt, vocab = tasks.date_task(500, seed=0)
  assert src.shape == (500, tasks.DATE_SRC_LEN) and tgt.shape == (500, tasks.DATE_TGT_LEN)
  parsers = ("%d %B %Y", "%B %d, %Y", "%d %b %Y", "%b %d %Y", "%d/%m/%Y", "%d.%m.%Y",
             "%A %d %B %Y")  # strptime matches month names case-insensitively

  def parse(text):
    for p in parsers:
      try:
        return datetime.datetime.strptime(text, p).date()
      except ValueError:
        pass
    raise AssertionError(f"unparseable source {text!r}")

  for s, t in zip(vocab.decode_batch(src), vocab.decode_batch(tgt)):
    assert parse(s).isoformat() == t
  assert len({len(s) for s in vocab.decode_batch(src)}) > 5  # the formats are mixed


def test_vocab_round_trip_and_shift_right():
  v = tasks.date_vocab()
  ids = v.encode("21 November 2026", add_eos=True)
  assert ids[-1] == EOS and v.decode(ids + [PAD, 5]) == "21 November 2026"
  batch = v.encode_batch(["1 May 2000", "2026-11-21"], width=12, add_eos=True)
  assert v.decode_batch(batch) == ["1 May 2000", "2026-11-21"]
  with pytest.raises(ValueError, match="width"):
    v.encode_batch(["a much too long string"], width=5)
  with pytest.raises(ValueError, match="not in the vocabulary"):
    v.encode("é")
  with pytest.raises(ValueError, match="duplicate"):
    CharVocab("aa")
  np.testing.assert_array_equal(shift_right(np.array([[5, 6, 2, 0]])), [[BOS, 5, 6, 2]])
