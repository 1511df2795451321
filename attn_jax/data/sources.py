"""`config.data` -> train stream, eval batches and what the model needs to know.

`config.data.source` picks the reader; everything after it (shuffle, augmentation,
batching, process sharding) is shared:

| source | reads | keys |
|---|---|---|
| `tfds` | `tfds.data_source(name)` (random access, no TensorFlow) | `name`, `data_dir`, `train_split`, `eval_split` |
| `local` | IDX folder, `<split>/<class>/` image folder or tar | `path`, `train_split`, `eval_split` |
| `multi30k` | `<path>/<split>.<lang>[.gz]` | `path`, `src_lang`, `tgt_lang` |
| `pairs` | two aligned text files per split | `train_files`, `eval_files` ("src,tgt") |
| `tsv` | a tab-separated file per split | `train_files`, `eval_files`, `src_column`, `tgt_column` |
| `task` | a generated task of `attn_jax.data.tasks` | `name`, `num_train`, `num_eval` |
| `text` | one text file per split, a sentence a line (language models) | `train_files`, `eval_files`, `seq_len`, `pack` |
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from attn_jax.data import images as I
from attn_jax.data import pipeline as P
from attn_jax.data import text as T

IMAGE_SOURCES = ("tfds", "local")
TEXT_SOURCES = ("multi30k", "pairs", "tsv", "task")
LM_SOURCES = ("text",)


@dataclasses.dataclass
class Data:
  """What the runner gets from `build`.

  kind: 'image' (batches {'image': [b, h, w, c] f32, 'label': [b] i32}), 'seq'
    (batches {'src': [b, S], 'tgt_in': [b, T], 'tgt_out': [b, T]} i32) or 'lm' (batches
    {'inputs', 'targets', 'segment_ids', 'positions'}: [b, seq_len] i32, see `packing`).
  train: this process's share of every global training batch (resumable).
  eval_batches: `() -> iterator` over the eval split, padded + `mask` [b].
  info: num_classes / image_shape, or src_vocab / tgt_vocab and the tokenizers.
  """
  kind: str
  train: P.TrainStream
  eval_batches: Callable[[], Iterator[dict[str, np.ndarray]]]
  info: dict[str, Any]


def _tfds_split(name: str, split: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # imported lazily: only the tfds source needs it
  return tfds.data_source(name, split=split, data_dir=data_dir or None)


def image_source(cfg, split: str) -> Sequence[dict[str, Any]]:
  """The random-access examples `{'image': uint8 [h, w, c], 'label': int}` of `split`:
  tfds (`cfg.source == 'tfds'`) or a local IDX folder, image folder or tar (`cfg.path`)."""
  if cfg.source == "tfds":
    return _tfds_split(cfg.name, split, cfg.get("data_dir"))
  return I.load_local_images(cfg.path, split).decoded(cfg.get("decode_limit_mb", 0),
                                                      workers=os.cpu_count() or 1)


def count_classes(src) -> int:
  """Number of classes of an image source: its class folders, its tfds info or its labels."""
  if getattr(src, "classes", None):
    return len(src.classes)
  if getattr(src, "labels", None) is not None:
    return int(np.max(src.labels)) + 1
  info = getattr(src, "dataset_info", None)
  if info is not None and "label" in info.features:
    return int(info.features["label"].num_classes)
  return int(max(int(src[i]["label"]) for i in range(len(src)))) + 1


def _text_pairs(cfg, split: str, files: str | None) -> list[tuple[str, str]]:
  if cfg.source == "multi30k":
    return T.read_pairs(*T.multi30k_files(cfg.path, split, cfg.src_lang, cfg.tgt_lang))
  if not files:
    raise ValueError(f"data.{'train' if split == 'train' else 'eval'}_files must be set "
                     f"for data.source='{cfg.source}'.")
  paths = [p.strip() for p in files.split(",")]
  if cfg.source == "tsv":
    return T.read_tsv(paths[0], cfg.get("src_column", 0), cfg.get("tgt_column", 1))
  if len(paths) != 2:
    raise ValueError(f"data.*_files for source 'pairs' must be 'src_path,tgt_path', got '{files}'.")
  return T.read_pairs(*paths)


# Below this round-trip BLEU of the eval references, the word tokenizer gets a warning.
BLEU_CEILING_WARN = 99.0


def _warn_bleu_ceiling(cfg, tokenizer, references: list[str], process_index: int) -> float | None:
  """The round-trip BLEU ceiling of `tokenizer` on the eval references; with the word
  tokenizer below `BLEU_CEILING_WARN` a one-line warning says so (process 0)."""
  if cfg.tokenizer != "word":
    return None
  ceiling = T.roundtrip_bleu(tokenizer, references)
  if ceiling is not None and ceiling < BLEU_CEILING_WARN and process_index == 0:
    import sys
    print(f"warning: with config.data.tokenizer='word' a perfect model scores at most BLEU "
          f"{ceiling:.1f} on the {cfg.eval_split} references (lower-cased words, unknown "
          "words, elisions and hyphens do not round-trip); "
          "--config.data.tokenizer=sentencepiece reproduces the text.", file=sys.stderr,
          flush=True)
  return ceiling


def task_examples(name: str, n: int, seed: int):
  """A generated task of `attn_jax.data.tasks` -> ([{'src': ids, 'tgt': ids}], vocab).

  The task's PAD is stripped and its EOS dropped from tgt (the collate adds BOS/EOS).
  """
  from attn_jax.data import tasks
  src, tgt, vocab = tasks.get_task(name, n, seed)
  examples = []
  for s, t in zip(src, tgt):
    t = t[t != T.PAD]
    examples.append({"src": s[s != T.PAD], "tgt": t[:-1] if len(t) and t[-1] == T.EOS else t})
  return examples, vocab


def build(config, process_index: int = 0, process_count: int = 1) -> Data:
  """Builds the data of `config` for process `process_index` of `process_count`."""
  cfg, seed = config.data, config.seed
  shard = dict(process_index=process_index, process_count=process_count)
  if cfg.source in IMAGE_SOURCES:
    train_src = image_source(cfg, cfg.train_split)
    eval_src = image_source(cfg, cfg.eval_split)
    first = np.asarray(train_src[0]["image"])
    shape = first.shape if first.ndim == 3 else first.shape + (1,)
    if cfg.canvas > max(shape[:2]):
      shape = (cfg.canvas, cfg.canvas, shape[-1])
    mean = list(cfg.mean) if cfg.mean else [0.5] * shape[-1]
    std = list(cfg.std) if cfg.std else [0.5] * shape[-1]
    warp = dict(rotate=cfg.rotate, translate=cfg.translate, canvas=cfg.canvas)
    aug = P.image_preprocess(mean, std, crop_padding=cfg.crop_padding, flip=cfg.flip,
                             policy=cfg.get("augment_policy", ""), **warp)
    plain = P.image_preprocess(mean, std, train=False, **warp)
    if cfg.get("batch_augment"):   # crop + flip per batch (validate() allows nothing else)
      batch_aug = P.batch_image_augment(mean, std, crop_padding=cfg.crop_padding, flip=cfg.flip)
      train = P.TrainStream(P.train_dataset(train_src, seed), config.batch_size,
                            batch_fn=batch_aug, seed=seed, **shard)
    else:
      train = P.TrainStream(P.train_dataset(train_src, seed, aug), config.batch_size, **shard)
    num_classes = cfg.num_classes or count_classes(train_src)
    info = {"num_classes": num_classes, "image_shape": shape, "num_train": len(train_src),
            "num_eval": len(eval_src)}
    eval_fn = lambda: P.eval_batches(eval_src, config.eval_batch_size, preprocess=plain,
                                     max_examples=cfg.max_eval_examples or None, **shard)
    return Data("image", train, eval_fn, info)

  if cfg.source in LM_SOURCES:
    return _lm_data(config, shard)
  if cfg.source not in TEXT_SOURCES:
    raise ValueError(f"data.source must be one of {IMAGE_SOURCES + TEXT_SOURCES + LM_SOURCES}, "
                     f"got '{cfg.source}'.")
  if cfg.source == "task":
    train_ex, vocab = task_examples(cfg.name, cfg.num_train, seed)
    # A different seed stream for eval; the generator may repeat a few training examples.
    eval_ex, _ = task_examples(cfg.name, cfg.num_eval, seed + 1_000_003)
    src_tok = tgt_tok = vocab
    sizes = (vocab.size, vocab.size)
  else:
    train_pairs = _text_pairs(cfg, cfg.train_split, cfg.get("train_files"))
    eval_pairs = _text_pairs(cfg, cfg.eval_split, cfg.get("eval_files"))
    # Tokenizers are fitted on the training split only.
    src_tok = T.fit_tokenizer(cfg.tokenizer, [s for s, _ in train_pairs], min_freq=cfg.min_freq,
                              vocab_size=cfg.vocab_size)
    tgt_tok = T.fit_tokenizer(cfg.tokenizer, [t for _, t in train_pairs], min_freq=cfg.min_freq,
                              vocab_size=cfg.vocab_size)
    sizes = (src_tok.vocab_size, tgt_tok.vocab_size)
    ceiling = _warn_bleu_ceiling(cfg, tgt_tok, [t for _, t in eval_pairs], process_index)

    def encode(pairs):
      return [{"src": np.array(src_tok.encode(s), np.int32),
               "tgt": np.array(tgt_tok.encode(t), np.int32)} for s, t in pairs]

    train_ex, eval_ex = encode(train_pairs), encode(eval_pairs)
  collate = P.seq_collate(cfg.buckets)
  if cfg.pack:   # training rows of the longest bucket, several pairs each; eval stays padded
    from attn_jax.data import packing
    order = np.random.default_rng(seed).permutation(len(train_ex))
    rows = packing.pack_pairs([train_ex[i] for i in order], max(cfg.buckets), max(cfg.buckets))
    train = P.TrainStream(P.train_dataset(packing.rows_as_examples(rows), seed),
                          config.batch_size, **shard)
  else:
    train = P.TrainStream(P.train_dataset(train_ex, seed), config.batch_size, collate,
                          needs_global=True, **shard)
  eval_fn = lambda: P.eval_batches(eval_ex, config.eval_batch_size, collate, needs_global=True,
                                   max_examples=cfg.max_eval_examples or None, **shard)
  info = {"src_vocab": sizes[0], "tgt_vocab": sizes[1], "src_tokenizer": src_tok,
          "tgt_tokenizer": tgt_tok, "num_train": len(train_ex), "num_eval": len(eval_ex)}
  if cfg.source != "task":
    info["eval_text"] = eval_pairs   # raw (src, tgt) sentences, in eval order, for BLEU
    info["bleu_ceiling"] = ceiling
  return Data("seq", train, eval_fn, info)


def _lm_data(config, shard: dict) -> Data:
  """`text` source: sentences -> (packed) rows for a decoder-only language model."""
  from attn_jax.data import packing
  cfg = config.data
  for key in ("train_files", "eval_files"):
    if not cfg.get(key):
      raise ValueError(f"data.{key} must name a text file for data.source='text'.")
  train_text, eval_text = T.read_lines(cfg.train_files), T.read_lines(cfg.eval_files)
  tok = T.fit_tokenizer(cfg.tokenizer, train_text, min_freq=cfg.min_freq,
                        vocab_size=cfg.vocab_size)

  def rows(text: list[str], order_seed: int | None):
    pairs = packing.lm_pairs([tok.encode(t) for t in text], cfg.seq_len)
    if order_seed is not None:   # which sentences share a row: fixed by the seed
      pairs = [pairs[i] for i in np.random.default_rng(order_seed).permutation(len(pairs))]
    return packing.pack_rows(pairs, cfg.seq_len, pack=cfg.pack)

  train_rows, eval_rows = rows(train_text, config.seed), rows(eval_text, None)
  train = P.TrainStream(P.train_dataset(packing.rows_as_examples(train_rows), config.seed),
                        config.batch_size, **shard)
  eval_ex = packing.rows_as_examples(eval_rows)
  eval_fn = lambda: P.eval_batches(eval_ex, config.eval_batch_size,
                                   max_examples=cfg.max_eval_examples or None, **shard)
  info = {"vocab_size": tok.vocab_size, "tokenizer": tok, "num_train": len(train_text),
          "num_eval": len(eval_text), "train_rows": len(train_rows["inputs"]),
          "fill_rate": packing.fill_rate(train_rows), "eval_text": eval_text}
  return Data("lm", train, eval_fn, info)
