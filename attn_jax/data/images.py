"""Local image readers: MNIST-format IDX files, image folders and tar archives.

Every reader returns an `ImageSource`: a random-access sequence of examples
`{'image': uint8 [h, w, c], 'label': int}` (the same records `tfds.data_source`
gives), so the grain pipeline in `attn_jax.data.pipeline` treats local files and
the tfds catalog alike. Readers check what they read and raise `DataError` naming
the file and the record.
"""
from __future__ import annotations

import concurrent.futures
import gzip
import io
import os
import struct
import tarfile
from typing import Any, Sequence

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class DataError(ValueError):
  """A data file is missing, truncated or malformed; the message names file and record."""


def _open(path: str):
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found.")
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (raw or .gz): uint8 images [n, rows, cols] or labels [n].

  Raises DataError naming the file (and the first missing record) when the magic
  number is wrong or the file is shorter than its header says.
  """
  with _open(path) as f:
    try:
      data = f.read()
    except (OSError, EOFError) as e:
      raise DataError(f"{path}: cannot read ({e}).") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise DataError(f"{path}: not an IDX file of uint8 (magic {data[:4].hex()}).")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f"{path}: truncated header.")
  dims = struct.unpack(">" + "I" * ndim, data[4:header])
  per_record = int(np.prod(dims[1:], dtype=np.int64)) if ndim > 1 else 1
  have = (len(data) - header) // per_record
  if have < dims[0]:
    raise DataError(f"{path}: truncated: header says {dims[0]} records, file ends in record {have}.")
  return np.frombuffer(data, np.uint8, count=dims[0] * per_record, offset=header).reshape(dims)


class ImageSource(Sequence):
  """Random-access examples `{'image': uint8 [h, w, c], 'label': int32}`.

  `images` is either a uint8 array [n, h, w, c] or a list of encoded image bytes
  (decoded with Pillow on access, to `channels` channels).
  """

  def __init__(self, images: Any, labels: np.ndarray, *, classes: Sequence[str] | None = None,
               names: Sequence[str] | None = None, channels: int = 3):
    if len(images) != len(labels):
      raise DataError(f"{len(images)} images but {len(labels)} labels.")
    self.images, self.labels = images, np.asarray(labels, np.int32)
    self.classes, self.names, self.channels = classes, names, channels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, Any]:
    img = self.images[i]
    if isinstance(img, bytes):
      img = _decode(img, self.channels, self.names[i] if self.names else f"record {i}")
    elif img.ndim == 2:
      img = img[..., None]
    return {"image": img, "label": self.labels[i]}

  def decoded(self, limit_mb: float, workers: int = 8) -> "ImageSource":
    """This source with its encoded images decoded once into one uint8 array [n, h, w, c].

    Decoding on every access costs about as much as the rest of an augmented CIFAR-10
    example; decoding once at load time (Pillow decodes in parallel threads) takes that
    off every epoch. Kept encoded (self is returned) when the images are already arrays,
    when the array would be over `limit_mb` MiB (by the first image's shape), or when the
    images differ in shape.
    """
    if limit_mb <= 0 or not len(self) or not isinstance(self.images[0], bytes):
      return self
    first = self[0]["image"]
    if len(self) * first.nbytes > limit_mb * 2**20:
      return self
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      arrays = list(pool.map(lambda i: self[i]["image"], range(len(self)), chunksize=256))
    if any(a.shape != first.shape for a in arrays):
      return self
    return ImageSource(np.stack(arrays), self.labels, classes=self.classes, names=self.names,
                       channels=self.channels)


def _decode(data: bytes, channels: int, name: str) -> np.ndarray:
  from PIL import Image  # only needed for encoded images
  try:
    img = Image.open(io.BytesIO(data))
    img = img.convert("L" if channels == 1 else "RGB")
  except Exception as e:  # Pillow raises many types for a broken file
    raise DataError(f"{name}: cannot decode image ({e}).") from e
  arr = np.asarray(img, np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


_IDX_NAMES = {"train": "train", "test": "t10k"}


def load_idx_split(directory: str, split: str) -> ImageSource:
  """MNIST-format folder (`train-images-idx3-ubyte[.gz]`, `t10k-labels-...`) -> ImageSource."""
  prefix = _IDX_NAMES.get(split)
  if prefix is None:
    raise DataError(f"{directory}: IDX data has splits {sorted(_IDX_NAMES)}, not '{split}'.")
  paths = []
  for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
    base = os.path.join(directory, f"{prefix}-{kind}")
    paths.append(base + ".gz" if os.path.exists(base + ".gz") or not os.path.exists(base) else base)
  images, labels = read_idx(paths[0]), read_idx(paths[1])
  if len(images) != len(labels):
    raise DataError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels.")
  return ImageSource(images[..., None], labels, channels=1)


def _class_of(parts: Sequence[str], split: str) -> str | None:
  """`.../<split>/<class>/<file>` -> class, else None."""
  for j in range(len(parts) - 2):
    if parts[j] == split and j == len(parts) - 3:
      return parts[j + 1]
  return None


def _finish(entries: list[tuple[str, str, bytes]], origin: str, split: str,
            channels: int) -> ImageSource:
  if not entries:
    raise DataError(f"{origin}: no images under '{split}/<class>/'.")
  entries.sort(key=lambda e: (e[0], e[1]))  # deterministic order, independent of the file system
  classes = sorted({e[0] for e in entries})
  index = {c: k for k, c in enumerate(classes)}
  return ImageSource([e[2] for e in entries], np.array([index[e[0]] for e in entries]),
                     classes=classes, names=[f"{origin}:{e[1]}" for e in entries],
                     channels=channels)


def load_image_folder(root: str, split: str, channels: int = 3) -> ImageSource:
  """`root/<split>/<class>/<image>` -> ImageSource; classes are the sorted sub-folder names."""
  top = os.path.join(root, split)
  if not os.path.isdir(top):
    raise DataError(f"{top}: folder not found.")
  entries = []
  for cls in sorted(os.listdir(top)):
    folder = os.path.join(top, cls)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      if name.lower().endswith(IMAGE_SUFFIXES):
        with open(os.path.join(folder, name), "rb") as f:
          entries.append((cls, os.path.join(split, cls, name), f.read()))
  return _finish(entries, root, split, channels)


def load_image_tar(path: str, split: str, channels: int = 3) -> ImageSource:
  """A tar (optionally gzipped) holding `[prefix/]<split>/<class>/<image>` -> ImageSource.

  The encoded bytes are kept in memory (CIFAR-10 as JPEG is ~20 MB) and decoded
  on access (`ImageSource.decoded` decodes them once instead).
  """
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found.")
  entries = []
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
          continue
        cls = _class_of(member.name.split("/"), split)
        if cls is not None:
          entries.append((cls, member.name, tar.extractfile(member).read()))
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataError(f"{path}: broken tar archive after {len(entries)} images ({e}).") from e
  return _finish(entries, path, split, channels)


def load_local_images(path: str, split: str, channels: int | None = None) -> ImageSource:
  """Dispatches on what `path` is: an IDX folder, a tar archive or an image folder.

  A folder holding a single tar (e.g. `../shared/data/cifar10_jpg`) reads the tar.
  """
  if not os.path.exists(path):
    raise DataError(f"{path}: not found.")
  if os.path.isfile(path):
    return load_image_tar(path, split, channels or 3)
  names = os.listdir(path)
  if any("idx3-ubyte" in n for n in names):
    return load_idx_split(path, split)
  if os.path.isdir(os.path.join(path, split)):
    return load_image_folder(path, split, channels or 3)
  tars = sorted(n for n in names if n.endswith((".tar", ".tar.gz", ".tgz")))
  if len(tars) == 1:
    return load_image_tar(os.path.join(path, tars[0]), split, channels or 3)
  raise DataError(f"{path}: expected IDX files, a '{split}/' image folder or one tar archive.")
