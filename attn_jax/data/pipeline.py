"""Grain pipelines over random-access sources, with resumable batch streams.

A training stream is `grain.MapDataset.source(src).seed(seed).shuffle().repeat()`
followed by per-example preprocessing (`random_map`, whose key grain derives from
the seed and the example index). Random access makes the batch at step `s` a pure
function of `(seed, s)`: the iterator's whole state is the step, saved with the
model, so a resumed run sees exactly the batches it would have seen.

With several processes, global batch `s` holds rows `[s*B, (s+1)*B)` of the stream;
process `p` of `P` reads only rows `p*B/P .. (p+1)*B/P` of it (its shard), which
is exactly what its devices hold in the `data`-sharded global array.
"""
from __future__ import annotations

import collections
import concurrent.futures
import zlib
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

Example = dict[str, Any]
Collate = Callable[[list[Example], list[Example]], dict[str, np.ndarray]]
# (local batch, generator of the step, global batch size, offset of the local rows) -> batch
BatchFn = Callable[[dict[str, np.ndarray], np.random.Generator, int, int], dict[str, np.ndarray]]


def stack_collate(local: list[Example], _: list[Example]) -> dict[str, np.ndarray]:
  """Stacks fixed-shape examples: {'image': [b, h, w, c], 'label': [b]}."""
  return {k: np.stack([ex[k] for ex in local]) for k in local[0]}


class TrainStream:
  """Infinite, resumable stream of this process's share of each global batch.

  Args:
    dataset: a grain MapDataset (shuffled, repeated, preprocessed) of examples.
    global_batch: examples per step over all processes.
    collate: (local examples, global examples or []) -> dict of arrays [local_batch, ...].
      `needs_global` collates (text bucketing) also see the whole global batch so
      every process pads to the same shape.
    batch_fn: optional random transform of each collated batch (`batch_image_augment`),
      with a generator seeded by (`seed`, step).
  """

  def __init__(self, dataset: grain.MapDataset, global_batch: int, collate: Collate = stack_collate,
               *, process_index: int = 0, process_count: int = 1, needs_global: bool = False,
               batch_fn: BatchFn | None = None, seed: int = 0):
    if global_batch % process_count:
      raise ValueError(f"batch_size={global_batch} must divide evenly over {process_count} processes.")
    self.ds, self.global_batch, self.collate = dataset, global_batch, collate
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.needs_global = needs_global
    self.batch_fn, self.seed = batch_fn, seed
    self.step = 0

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step` (a pure function of the step)."""
    start = step * self.global_batch
    local = [self.ds[start + self.offset + i] for i in range(self.local_batch)]
    every = [self.ds[start + i] for i in range(self.global_batch)] if self.needs_global else []
    batch = self.collate(local, every)
    if self.batch_fn is not None:   # draws for the whole global batch: any process count agrees
      rng = np.random.default_rng([self.seed, step])
      batch = self.batch_fn(batch, rng, self.global_batch, self.offset)
    return batch

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self.step)
    self.step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    """{'step': the next global batch}: what a checkpoint stores."""
    return {"step": int(self.step)}

  def set_state(self, state: dict[str, int]) -> None:
    """Resumes at `state['step']` (from `get_state`)."""
    self.step = int(state["step"])


class Prefetch:
  """The next `depth` batches of a `TrainStream`, read, decoded, augmented and put on the
  devices by worker threads while the current step runs.

  Args:
    stream: the resumable stream (its `batch_at(step)` is a pure function of the step,
      so workers can build batches in any order).
    put: host batch -> device batch (e.g. `strategy.put_batch`); runs in the workers.
    depth: batches in flight; 0 reads each batch on the calling thread when asked.
    workers: threads (default 1: augmentation in Python holds the GIL, so more threads
      contend for it; CIFAR-10 crop + flip on 2 cores ran 53 batches/s with one worker,
      30 with two, `experiments/gpu_check.py --part pipeline`).

  `get_state()` is the state of the next batch `__next__` returns, whatever is in
  flight, so a checkpoint resumes exactly where the training consumed.
  """

  def __init__(self, stream: TrainStream, put: Callable[[dict], Any] = lambda b: b,
               depth: int = 2, workers: int | None = None):
    self.stream, self.put, self.depth = stream, put, depth
    self.next_step = stream.step
    self._pending: collections.deque = collections.deque()
    self._pool = (concurrent.futures.ThreadPoolExecutor(workers or 1,
                                                        thread_name_prefix="prefetch")
                  if depth > 0 else None)

  def _load(self, step: int):
    return self.put(self.stream.batch_at(step))

  def _fill(self) -> None:
    while len(self._pending) < self.depth:
      step = self.next_step + len(self._pending)
      self._pending.append(self._pool.submit(self._load, step))

  def __iter__(self) -> "Prefetch":
    return self

  def __next__(self):
    if self._pool is None:
      batch = self._load(self.next_step)
    else:
      self._fill()
      batch = self._pending.popleft().result()
    self.next_step += 1
    if self._pool is not None:
      self._fill()   # keep `depth` batches in flight while the step runs
    return batch

  def get_state(self) -> dict[str, int]:
    """{'step': the next batch to consume} (batches built ahead are not counted)."""
    return {"step": int(self.next_step)}

  def set_state(self, state: dict[str, int]) -> None:
    """Drops the batches built ahead and resumes at `state['step']`."""
    for fut in self._pending:
      fut.cancel()
    self._pending.clear()
    self.next_step = int(state["step"])

  def close(self) -> None:
    """Stops the workers (batches in flight are dropped)."""
    for fut in self._pending:
      fut.cancel()
    self._pending.clear()
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)


def train_dataset(source: Sequence[Example], seed: int,
                  preprocess: Callable[[Example, np.random.Generator], Example] | None = None
                  ) -> grain.MapDataset:
  """Shuffled (a new permutation every epoch), repeated, randomly preprocessed examples."""
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  return ds.random_map(preprocess) if preprocess is not None else ds


def eval_batches(source: Sequence[Example], global_batch: int, collate: Collate = stack_collate,
                 preprocess: Callable[[Example], Example] | None = None, *,
                 process_index: int = 0, process_count: int = 1, needs_global: bool = False,
                 max_examples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `source` in order. The last global batch is padded (with copies of
  example 0) and every batch carries `mask: [local_batch]` float32, 1 for real examples,
  so metrics summed with the mask count every example exactly once.
  """
  ds = grain.MapDataset.source(source)
  if preprocess is not None:
    ds = ds.map(preprocess)
  n = len(ds) if max_examples is None else min(len(ds), max_examples)
  local_batch = global_batch // process_count
  offset = process_index * local_batch
  for start in range(0, n, global_batch):
    rows = [start + offset + i for i in range(local_batch)]
    local = [ds[r if r < n else 0] for r in rows]
    every = ([ds[r if r < n else 0] for r in range(start, start + global_batch)]
             if needs_global else [])
    batch = collate(local, every)
    batch["mask"] = np.array([r < n for r in rows], np.float32)
    yield batch


# ----- image preprocessing ------------------------------------------------------------------


def draw_affine(rng: np.random.Generator, rotate: float = 0.0,
                translate: int = 0) -> tuple[float, np.ndarray]:
  """(angle in degrees, uniform in [-rotate, rotate]; integer shift [dy, dx] in
  [-translate, translate]); nothing is drawn for a zero range."""
  angle = float(rng.uniform(-rotate, rotate)) if rotate else 0.0
  shift = rng.integers(-translate, translate + 1, size=2) if translate else np.zeros(2, np.int64)
  return angle, shift


def eval_warp_rng(img: np.ndarray) -> np.random.Generator:
  """The generator of a test image's fixed warp: seeded by the image's bytes (order-free)."""
  return np.random.default_rng(zlib.crc32(np.ascontiguousarray(img).tobytes()))


def random_affine(img: np.ndarray, rng: np.random.Generator, rotate: float = 0.0,
                  translate: int = 0, canvas: int = 0) -> np.ndarray:
  """Places `img` [h, w, c] centred on a `canvas` x `canvas` black image (if larger), rotates it
  by a uniform angle in [-rotate, rotate] degrees about the centre (counter-clockwise as
  displayed: +90 is `np.rot90(img, 1)`) and shifts it by uniform integer pixels in
  [-translate, translate] per axis (bilinear, zero fill) -> same dtype."""
  from scipy import ndimage
  h, w = img.shape[:2]
  if canvas > max(h, w):
    top, left = (canvas - h) // 2, (canvas - w) // 2
    img = np.pad(img, ((top, canvas - h - top), (left, canvas - w - left), (0, 0)))
    h = w = canvas
  angle, shift = draw_affine(rng, rotate, translate)
  cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
  inv = np.array([[cos, sin], [-sin, cos]])          # output (y, x) -> input (y, x)
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  offset = centre - inv @ (centre + shift)
  out = np.empty_like(img)
  for ch in range(img.shape[-1]):
    out[..., ch] = ndimage.affine_transform(img[..., ch].astype(np.float32), inv, offset, order=1,
                                            mode="constant", cval=0.0).round().clip(0, 255)
  return out


def random_crop(img: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
  """A random [h, w, c] window of `img` [h, w, c] zero-padded by `padding` pixels per side.

  The same crop as slicing `np.pad(img, padding)` at offsets (dy, dx) in [0, 2 * padding],
  without building the padded image.
  """
  h, w = img.shape[:2]
  dy, dx = rng.integers(0, 2 * padding + 1, size=2) - padding   # shift of the window
  out = np.zeros_like(img)
  ny, nx = max(0, h - abs(dy)), max(0, w - abs(dx))   # rows / columns of img in the window
  y0, x0 = max(0, dy), max(0, dx)
  out[y0 - dy:y0 - dy + ny, x0 - dx:x0 - dx + nx] = img[y0:y0 + ny, x0:x0 + nx]
  return out


def batch_image_augment(mean: Sequence[float], std: Sequence[float], *, crop_padding: int = 0,
                        flip: bool = False) -> BatchFn:
  """Returns `f(batch, rng, global_batch, offset)`: random crop with zero padding and
  horizontal flip of a whole batch {'image': uint8 [b, h, w, c], 'label': [b]} in a few
  vectorized numpy ops, then `(x / 255 - mean) / std` -> {'image': float32 [b, h, w, c],
  'label': int32 [b]} (other keys dropped).

  The crops and flips of the whole global batch are drawn from `rng` and the local rows
  `offset:offset + b` taken, so every process count trains on the same images. The same
  transform as `image_preprocess(..., crop_padding, flip)` per example, with other draws.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  # (v / 255 - mean) / std for every uint8 value v of each channel, channel c at c * 256:
  # one table lookup per pixel instead of broadcasting float ops over the channel axis.
  table = ((np.arange(256, dtype=np.float32)[:, None] / 255.0 - mean) / std).T.ravel()
  channel_offset = (np.arange(len(mean)) * 256).astype(np.uint16)

  def augment(batch, rng: np.random.Generator, global_batch: int, offset: int):
    img = np.asarray(batch["image"])
    b, h, w = img.shape[:3]
    p = crop_padding
    dy, dx = rng.integers(0, 2 * p + 1, size=(2, global_batch))[:, offset:offset + b]
    mirror = (rng.random(global_batch) < 0.5)[offset:offset + b] if flip else np.zeros(b, bool)
    padded = np.pad(img, ((0, 0), (p, p), (p, p), (0, 0))) if p else img
    out = np.empty_like(img)
    for i, (y, x, m) in enumerate(zip(dy.tolist(), dx.tolist(), mirror.tolist())):
      window = padded[i, y:y + h, x:x + w]   # slice copies: faster than one fancy gather
      out[i] = window[:, ::-1] if m else window
    image = np.take(table, out.astype(np.uint16) + channel_offset)
    return {"image": image, "label": np.asarray(batch["label"], np.int32)}

  return augment


def image_preprocess(mean: Sequence[float], std: Sequence[float], *, crop_padding: int = 0,
                     flip: bool = False, rotate: float = 0.0, translate: int = 0, canvas: int = 0,
                     policy: str = "", train: bool = True):
  """Returns `f(example[, rng])`: optional random rotation/translation on a canvas (train and
  eval: it defines the task), random crop with zero padding, horizontal flip and an
  augmentation policy (`attn_jax.data.autoaugment`: 'autoaugment', 'randaugment-n2-m9';
  train only), then `(x / 255 - mean) / std` -> float32 [h, w, c].

  For eval the affine warp of each image is drawn from a generator seeded by the image's
  bytes, so the test set is the same fixed set of warped images in every run and order.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  warp = bool(rotate or translate or canvas)
  from attn_jax.data.autoaugment import policy_transform
  augment_policy = policy_transform(policy)

  def normalize(img: np.ndarray, label) -> Example:
    img = np.asarray(img, np.float32) / 255.0
    return {"image": (img - mean) / std, "label": np.int32(label)}

  if not train:
    def plain(ex: Example) -> Example:
      img = np.asarray(ex["image"])
      if warp:
        img = random_affine(img, eval_warp_rng(img), rotate, translate, canvas)
      return normalize(img, ex["label"])
    return plain

  def augment(ex: Example, rng: np.random.Generator) -> Example:
    img = np.asarray(ex["image"])
    if warp:
      img = random_affine(img, rng, rotate, translate, canvas)
    if crop_padding:
      img = random_crop(img, crop_padding, rng)
    if flip and rng.random() < 0.5:
      img = img[:, ::-1]
    if augment_policy is not None:
      img = augment_policy(np.ascontiguousarray(img), rng)
    return normalize(img, ex["label"])

  return augment


# ----- sequence batching --------------------------------------------------------------------


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n (the largest bucket if none fits; longer rows are cut)."""
  for b in sorted(buckets):
    if n <= b:
      return b
  return max(buckets)


def seq_collate(buckets: Sequence[int]) -> Collate:
  """Pads token-id examples {'src': [s], 'tgt': [t]} (tgt without BOS/EOS) to a bucket shape.

  Output: src [b, S] (EOS-terminated), tgt_in [b, T] (BOS + tgt), tgt_out [b, T]
  (tgt + EOS), int32, PAD=0. S and T are the smallest buckets that fit the whole
  global batch, so all processes agree and the step compiles once per bucket.
  """
  from attn_jax.data.text import BOS, EOS

  def collate(local: list[Example], every: list[Example]) -> dict[str, np.ndarray]:
    ref = every or local
    s_len = bucket_length(max(len(ex["src"]) + 1 for ex in ref), buckets)
    t_len = bucket_length(max(len(ex["tgt"]) + 1 for ex in ref), buckets)
    out = {k: np.zeros((len(local), n), np.int32)
           for k, n in (("src", s_len), ("tgt_in", t_len), ("tgt_out", t_len))}
    for i, ex in enumerate(local):
      src = list(ex["src"])[:s_len - 1] + [EOS]
      tgt = list(ex["tgt"])[:t_len - 1]
      out["src"][i, :len(src)] = src
      out["tgt_in"][i, :len(tgt) + 1] = [BOS] + tgt
      out["tgt_out"][i, :len(tgt) + 1] = tgt + [EOS]
    return out

  return collate
