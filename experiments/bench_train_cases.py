"""What `experiments.bench_train` measures: its configs (`CASES`), and for each the project's
model, the plain Flax peer, the task, the experiment config its data and optimizer come
from, and its batches (real `TrainStream` or synthetic of the same shapes).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import numpy as np

from attn_jax.data import pipeline as P
from attn_jax.data import sources
from attn_jax.seq.transformer import Transformer
from attn_jax.tokens import PAD
from attn_jax.train.tasks import CLASSIFICATION, SEQ2SEQ, Task
from attn_jax.vision.swin import swin_variant
from attn_jax.vision.vit import vit_variant
from experiments.bench_peers import PeerSwin, PeerTransformer, PeerViT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark config.

  name: the `--configs` key; label: what the table prints (before the batch); kind:
  'vit' | 'swin' | 'transformer'; variant: the `vit_variant` / `swin_variant` name;
  image_size: pixels (side); batch: examples per step; steps: timed steps per variant and
  round (default); num_classes: classifier outputs; real: the real data set ('cifar10' |
  'multi30k' | None: synthetic only); goal: the ours/peer throughput ratio to reach.
  """
  name: str
  label: str
  kind: str
  batch: int
  steps: int
  variant: str = ""
  image_size: int = 0
  num_classes: int = 10
  real: str | None = None
  goal: float = 1.0


CASES: dict[str, Case] = {c.name: c for c in (
    Case("vit_ti16", "ViT-Ti/16 224px (197 tok)", "vit", 32, 2, "ViT-Ti/16", 224, 1000),
    Case("vit_s4", "ViT-S/4 32px (65 tok)", "vit", 128, 1, "ViT-S/4", 32, 10, "cifar10"),
    Case("vit_ti8", "ViT-Ti/8 224px (785 tok)", "vit", 8, 2, "ViT-Ti/8", 224, 1000,
         goal=1.3),
    Case("swin_t", "Swin-T/p2w4 32px", "swin", 64, 3, "Swin-T/p2w4", 32, 10, "cifar10"),
    Case("transformer", "Transformer 3+3 w256 Multi30k", "transformer", 128, 3,
         real="multi30k"),
)}
# --tiny: sizes for a seconds-long check of the script itself (tests)
TINY_VISION = dict(width=32, depth=2, num_heads=2, mlp_dim=64)
TINY_SWIN = dict(width=16, depth=(2, 2), num_heads=(2, 4))
TINY_TRANSFORMER = dict(width=32, num_heads=4, mlp_dim=64, depth=1)
# Multi30k de->en vocabulary sizes (word tokenizer, min frequency 2): the synthetic fallback
M30K_VOCAB = (7882, 5898)


def build_models(case: Case, tiny: bool, vocab: tuple[int, int]
                 ) -> tuple[Callable[[bool], nn.Module], nn.Module, Task]:
  """(scan_layers -> the project's model, the plain peer, the task)."""
  if case.kind == "vit":
    over = TINY_VISION if tiny else {}
    ours = lambda scan: vit_variant(case.variant, case.num_classes, case.image_size,
                                    scan_layers=scan, **over)
    m = ours(False)
    return ours, PeerViT(case.num_classes, m.patch_size, m.width, m.depth, m.num_heads,
                         m.mlp_dim), CLASSIFICATION
  if case.kind == "swin":
    over = TINY_SWIN if tiny else {}
    ours = lambda scan: swin_variant(case.variant, case.num_classes, drop_path_rate=0.0,
                                     scan_layers=scan, **over)
    m = ours(False)
    return ours, PeerSwin(case.num_classes, m.patch_size, m.window_size, m.width,
                          tuple(m.depth), tuple(m.num_heads), m.mlp_ratio), CLASSIFICATION
  sizes = TINY_TRANSFORMER if tiny else dict(width=256, num_heads=8, mlp_dim=512, depth=3)
  ours = lambda scan: Transformer(*vocab, **sizes, dropout_rate=0.1, attention_dropout_rate=0.0,
                                  scan_layers=scan)
  return ours, PeerTransformer(*vocab, **sizes, dropout_rate=0.1), SEQ2SEQ


def project_config(case: Case, batch: int):
  """The experiment config the data and optimizer come from (paths from the repo root)."""
  if case.kind == "transformer":
    from configs import multi30k_transformer
    c = multi30k_transformer.get_config("de_en")
  else:
    from configs import cifar10_vit
    c = cifar10_vit.get_config()
  c.batch_size = batch
  if not os.path.isabs(c.data.path):
    c.data.path = os.path.normpath(os.path.join(ROOT, c.data.path))
  return c


_DATA_CACHE: dict[str, sources.Data] = {}


def real_stream(case: Case, batch: int, use_real: bool) -> tuple[P.TrainStream | None, dict, str]:
  """(the real TrainStream at step 0 or None, Data.info, a note). Image data is built once
  and re-batched for each config."""
  if not use_real or case.real is None:
    return None, {}, "synthetic only" if case.real is None else "real data off (--no-real)"
  cfg = project_config(case, batch)
  if not os.path.exists(cfg.data.path):
    msg = (f"WARNING: {cfg.data.path} not found; {case.name} runs on synthetic batches of the "
           "same shapes")
    print(msg, file=sys.stderr, flush=True)
    return None, {}, msg
  if case.real not in _DATA_CACHE:
    t0 = time.perf_counter()
    _DATA_CACHE[case.real] = sources.build(cfg)
    print(f"built {case.real} data in {time.perf_counter() - t0:.1f}s", file=sys.stderr,
          flush=True)
  data = _DATA_CACHE[case.real]
  collate = data.train.collate
  stream = P.TrainStream(data.train.ds, batch, collate, needs_global=data.train.needs_global)
  return stream, data.info, f"real {case.real} ({cfg.data.path})"


def synthetic_batches(case: Case, batch: int, count: int, tiny: bool, vocab: tuple[int, int],
                      seed: int = 0) -> list[Batch]:
  """Host batches: images -> one random batch (reused); seq2seq -> `count` batches of the
  most common Multi30k shape (src, tgt [batch, 32], random lengths 8..31, PAD after)."""
  rng = np.random.default_rng(seed)
  if case.kind != "transformer":
    hw = case.image_size
    return [{"image": rng.standard_normal((batch, hw, hw, 3), np.float32),
             "label": rng.integers(0, case.num_classes, batch).astype(np.int32)}]
  out = []
  for _ in range(count):
    b = {}
    for key, vocab_size in (("src", vocab[0]), ("tgt_in", vocab[1]), ("tgt_out", vocab[1])):
      ids = rng.integers(4, vocab_size, (batch, 32)).astype(np.int32)
      lens = rng.integers(8, 32, batch)
      ids[np.arange(32)[None, :] >= lens[:, None]] = PAD
      b[key] = ids
    out.append(b)
  return out


def units_of(case: Case, batch: Batch) -> float:
  """Images in the batch, or its non-pad target tokens."""
  if case.kind == "transformer":
    return float(np.sum(np.asarray(batch["tgt_out"]) != PAD))
  return float(np.shape(batch["image"])[0])
