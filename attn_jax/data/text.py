"""Text pairs (two aligned files, a TSV, Multi30k) and tokenizers.

Token ids follow the sequence models: PAD=0, BOS=1, EOS=2, UNK=3. Tokenizers are
fitted on the training split only. Readers check what they read: a missing file,
unequal line counts or a non-UTF-8 line raise `DataError` naming file and line.
"""
from __future__ import annotations

import collections
import gzip
import io
import os
import re
from typing import Iterable, Sequence

from attn_jax.data.images import DataError
from attn_jax.tokens import BOS, EOS, PAD, SPECIALS, UNK


def read_lines(path: str) -> list[str]:
  """Lines of a text file (raw or .gz), stripped of the newline; UTF-8 checked per line."""
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found.")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  lines = []
  for n, line in enumerate(raw.split(b"\n"), start=1):
    try:
      lines.append(line.decode("utf-8").rstrip("\r"))
    except UnicodeDecodeError as e:
      raise DataError(f"{path}: line {n} is not UTF-8 ({e.reason} at byte {e.start}).") from e
  if lines and lines[-1] == "":
    lines.pop()
  return lines


def read_pairs(src_path: str, tgt_path: str) -> list[tuple[str, str]]:
  """Two aligned files, one sentence a line -> [(src, tgt)]; counts must match."""
  src, tgt = read_lines(src_path), read_lines(tgt_path)
  if len(src) != len(tgt):
    raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                    f"first unpaired line is {min(len(src), len(tgt)) + 1}.")
  return list(zip(src, tgt))


def read_tsv(path: str, src_col: int = 0, tgt_col: int = 1) -> list[tuple[str, str]]:
  """A tab-separated file -> [(src, tgt)] from columns `src_col` and `tgt_col` (0-based;
  swap them to train the other direction from the same file)."""
  if src_col < 0 or tgt_col < 0 or src_col == tgt_col:
    raise DataError(f"{path}: source column {src_col} and target column {tgt_col} must be two "
                    "different columns >= 0.")
  pairs = []
  for n, line in enumerate(read_lines(path), start=1):
    cols = line.split("\t")
    if len(cols) <= max(src_col, tgt_col):
      raise DataError(f"{path}: line {n} has {len(cols)} columns; need column "
                      f"{max(src_col, tgt_col)} (config.data.src_column={src_col}, "
                      f"tgt_column={tgt_col}, counted from 0).")
    pairs.append((cols[src_col], cols[tgt_col]))
  return pairs


def multi30k_files(root: str, split: str, src_lang: str, tgt_lang: str) -> tuple[str, str]:
  """Paths of a Multi30k split (`train`, `val`, `test_2016_flickr`), .gz or not."""
  out = []
  for lang in (src_lang, tgt_lang):
    base = os.path.join(root, f"{split}.{lang}")
    out.append(base + ".gz" if os.path.exists(base + ".gz") else base)
  return out[0], out[1]


_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class WordTokenizer:
  """Lower-cased word/punctuation tokens; words seen fewer than `min_freq` times -> UNK.

  `case` maps a lower-cased word to its most frequent written form in the training texts
  (counted away from the sentence start, where capitals say nothing), e.g. German nouns
  'hund' -> 'Hund'; `detokenize(..., case=tok.case)` restores it for cased BLEU.
  """

  def __init__(self, vocab: Sequence[str], case: dict[str, str] | None = None):
    self.itos = list(vocab)
    self.stoi = {w: i for i, w in enumerate(self.itos)}
    self.case = dict(case or {})

  @staticmethod
  def split(text: str) -> list[str]:
    """The lower-cased word and punctuation tokens of `text`."""
    return _WORD.findall(text.lower())

  @classmethod
  def fit(cls, texts: Iterable[str], min_freq: int = 2, max_size: int | None = None):
    """A tokenizer of the words seen at least `min_freq` times in `texts` (most frequent
    first, at most `max_size`), after PAD, BOS, EOS, UNK."""
    texts = list(texts)
    counts = collections.Counter(w for t in texts for w in cls.split(t))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    words = words[:max_size]
    forms = collections.Counter(w for t in texts for w in _WORD.findall(t)[1:])
    best: dict[str, tuple[int, str]] = {}
    for form, c in forms.items():
      low = form.lower()
      if (c, form) > best.get(low, (0, "")):
        best[low] = (c, form)
    case = {w: best[w][1] for w in words if w in best and best[w][1] != w}
    return cls(list(SPECIALS) + words, case)

  @property
  def vocab_size(self) -> int:
    """Number of ids, specials included."""
    return len(self.itos)

  def encode(self, text: str) -> list[int]:
    """Text -> ids (UNK for unknown words), without BOS / EOS."""
    return [self.stoi.get(w, UNK) for w in self.split(text)]

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text; stops at the first EOS and drops PAD and BOS."""
    return " ".join(self.itos[i] for i in _until_eos(ids) if i != PAD and i != BOS)


class SentencePieceTokenizer:
  """A sentencepiece unigram/BPE model trained in memory on the training texts."""

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm
    self.proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

  @classmethod
  def fit(cls, texts: Iterable[str], vocab_size: int = 8000, model_type: str = "unigram"):
    """Trains a `model_type` ('unigram' | 'bpe') model of about `vocab_size` pieces on
    `texts`; ids 0..3 are PAD, BOS, EOS, UNK."""
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
        model_type=model_type, pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    return cls(buf.getvalue())

  @property
  def vocab_size(self) -> int:
    """Number of pieces, specials included."""
    return self.sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Text -> piece ids, without BOS / EOS."""
    return list(self.sp.encode(text))

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text; stops at the first EOS and drops PAD and BOS."""
    return self.sp.decode([i for i in _until_eos(ids) if i != PAD and i != BOS])


class CharTokenizer:
  """One id per character (case kept); characters seen fewer than `min_freq` times -> UNK."""

  def __init__(self, chars: Sequence[str]):
    self.itos = list(SPECIALS) + list(chars)
    self.stoi = {c: i for i, c in enumerate(self.itos) if i >= len(SPECIALS)}

  @classmethod
  def fit(cls, texts: Iterable[str], min_freq: int = 1):
    """A tokenizer of the characters seen at least `min_freq` times in `texts` (sorted)."""
    counts = collections.Counter(c for t in texts for c in t)
    return cls(sorted(c for c, n in counts.items() if n >= min_freq))

  @property
  def vocab_size(self) -> int:
    """Number of ids, specials included."""
    return len(self.itos)

  def encode(self, text: str) -> list[int]:
    """Text -> one id per character (UNK for unseen ones), without BOS / EOS."""
    return [self.stoi.get(c, UNK) for c in text]

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text; stops at the first EOS and drops PAD and BOS."""
    return "".join(self.itos[i] for i in _until_eos(ids) if i != PAD and i != BOS)


_NO_SPACE_BEFORE = re.compile(r" ([.,!?;:%)\]}])")
_CLITIC = re.compile(r" ' (s|t|re|ve|ll|d|m)\b")


def detokenize(text: str, case: dict[str, str] | None = None) -> str:
  """Space-joined word tokens -> a sentence: no space before closing punctuation, first
  letter upper-cased, clitics joined ("a dog ' s toy ." -> "A dog's toy."); with `case`
  (`WordTokenizer.case`) each word takes its usual written form ("ein hund" -> "Ein Hund")."""
  if case:
    text = " ".join(case.get(w, w) for w in text.split(" "))
  text = _CLITIC.sub(r"'\1", _NO_SPACE_BEFORE.sub(r"\1", text))
  return text[:1].upper() + text[1:]


def _until_eos(ids: Iterable[int]) -> list[int]:
  out = []
  for i in ids:
    if int(i) == EOS:
      break
    out.append(int(i))
  return out


def roundtrip(tokenizer, text: str) -> str:
  """`text` encoded and decoded again, as decoded model output is scored."""
  out = tokenizer.decode(tokenizer.encode(text))
  return detokenize(out, tokenizer.case) if isinstance(tokenizer, WordTokenizer) else out


def roundtrip_bleu(tokenizer, references: Sequence[str]) -> float | None:
  """BLEU of the references against their own tokenizer round trip: the most a perfect
  model can score with `tokenizer` (None without sacrebleu or references)."""
  try:
    import sacrebleu
  except ImportError:
    return None
  if not references:
    return None
  hyps = [roundtrip(tokenizer, r) for r in references]
  return float(sacrebleu.corpus_bleu(hyps, [list(references)]).score)


def fit_tokenizer(kind: str, texts: Sequence[str], *, min_freq: int = 2, vocab_size: int = 8000):
  """`kind` in {'word', 'sentencepiece', 'char'}; fit on training texts only."""
  if kind == "word":
    return WordTokenizer.fit(texts, min_freq=min_freq)
  if kind == "char":
    return CharTokenizer.fit(texts, min_freq=min_freq)
  if kind == "sentencepiece":
    return SentencePieceTokenizer.fit(texts, vocab_size=vocab_size)
  raise ValueError(f"data.tokenizer must be 'word', 'sentencepiece' or 'char', got '{kind}'.")
