"""Reading and writing checkpoint files as flat {key: NumPy array} dicts.

- `.npz`: NumPy archives (google-research/vision_transformer, big_vision).
- `.safetensors`: read and written here with NumPy only. The format: an 8-byte
  little-endian header length N, N bytes of JSON ({name: {"dtype", "shape",
  "data_offsets": [begin, end]}} plus an optional "__metadata__" {str: str}), then the raw
  little-endian, row-major tensor bytes, offsets relative to the end of the header.
- `.pth` / `.pt` / `.bin`: PyTorch pickles, read with `torch.load(weights_only=True)` when
  torch is installed (a state dict, or one under 'model' / 'state_dict').
"""
from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from typing import Mapping

import ml_dtypes
import numpy as np

from attn_jax.pretrained.report import CheckpointFormatError

Tensors = dict[str, np.ndarray]

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
              "U8": np.uint8, "BOOL": np.bool_}
_ST_CODES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def read_safetensors(path: str) -> tuple[Tensors, dict[str, str]]:
  """-> ({name: array}, metadata). Raises CheckpointFormatError for a malformed or
  truncated file, naming the tensor whose bytes are missing."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise CheckpointFormatError(f"{path}: truncated safetensors file ({len(data)} bytes; "
                                "the 8-byte header length alone needs 8).")
  (n,) = struct.unpack("<Q", data[:8])
  if 8 + n > len(data):
    raise CheckpointFormatError(f"{path}: truncated safetensors file: the header says it is "
                                f"{n} bytes long but the file has {len(data)} bytes.")
  try:
    header = json.loads(data[8:8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointFormatError(f"{path}: not a safetensors file (its header is not JSON: "
                                f"{e}).") from e
  if not isinstance(header, dict):
    raise CheckpointFormatError(f"{path}: not a safetensors file (header is not an object).")
  metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
  buf = memoryview(data)[8 + n:]
  out: Tensors = {}
  for name, info in header.items():
    try:
      dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointFormatError(f"{path}: tensor '{name}' has a malformed header entry "
                                  f"{info!r}.") from e
    count = math.prod(shape)
    if end > len(buf):
      raise CheckpointFormatError(f"{path}: truncated: tensor '{name}' needs bytes "
                                  f"[{begin}, {end}) of the data but the file holds {len(buf)}.")
    if end - begin != count * dtype.itemsize or begin < 0:
      raise CheckpointFormatError(f"{path}: tensor '{name}' {info['dtype']}{list(shape)} needs "
                                  f"{count * dtype.itemsize} bytes, its offsets give "
                                  f"{end - begin}.")
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=begin).reshape(shape)
    out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
  return out, metadata


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` (any shapes, the dtypes of `_ST_DTYPES`) and string `metadata` as one
  safetensors file: tensors in name order, header padded with spaces to 8 bytes. The file
  is written next to `path` and renamed into place, so a reader never sees half of it."""
  header: dict = {}
  blobs = []
  offset = 0
  for name in sorted(tensors):
    arr = np.asarray(tensors[name])
    if arr.dtype not in _ST_CODES:
      raise ValueError(f"write_safetensors: tensor '{name}' has dtype {arr.dtype}, which "
                       f"safetensors cannot store; use one of {sorted(map(str, _ST_CODES))}.")
    raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    header[name] = {"dtype": _ST_CODES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  text = json.dumps(header, separators=(",", ":")).encode("utf-8")
  text += b" " * (-len(text) % 8)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for raw in blobs:
      f.write(raw)
  os.replace(tmp, path)


def read_npz(path: str) -> Tensors:
  """All arrays of an `.npz` (no pickles)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
    raise CheckpointFormatError(f"{path}: not a readable .npz archive (truncated or "
                                f"corrupt?): {e}") from e


def _torch_to_numpy(t) -> np.ndarray:
  import torch
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def read_pth(path: str) -> Tensors:
  """A PyTorch state dict (or {'model' | 'state_dict' | 'module': state dict}) as arrays."""
  try:
    import torch
  except ImportError as e:
    raise CheckpointFormatError(f"{path}: reading a PyTorch checkpoint needs torch (pip "
                                "install torch), or save it as .safetensors.") from e
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
    raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint (truncated or "
                                f"corrupt?): {type(e).__name__}: {e}") from e
  for key in ("model", "state_dict", "module"):
    if isinstance(sd, dict) and isinstance(sd.get(key), dict):
      sd = sd[key]
  if not isinstance(sd, dict):
    raise CheckpointFormatError(f"{path}: holds a {type(sd).__name__}, not a state dict.")
  return {k: _torch_to_numpy(v) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def file_kind(path: str) -> str:
  """'npz' | 'safetensors' | 'pth', from the extension, else from the first bytes."""
  ext = os.path.splitext(path)[1].lower()
  if ext in (".npz", ".safetensors"):
    return ext[1:]
  if ext in (".pth", ".pt", ".bin"):
    return "pth"
  with open(path, "rb") as f:
    head = f.read(9)
  if head[:4] == b"PK\x03\x04":
    try:
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
    except zipfile.BadZipFile as e:
      raise CheckpointFormatError(f"{path}: a damaged zip archive: {e}") from e
    return "pth" if any(n.endswith("data.pkl") for n in names) else "npz"
  if len(head) == 9 and head[8:9] == b"{":
    return "safetensors"
  raise CheckpointFormatError(f"{path}: unknown checkpoint file type; expected .npz, "
                              ".safetensors or a PyTorch .pth.")


def read_checkpoint(path: str) -> tuple[Tensors, dict[str, str]]:
  """Any supported file -> ({key: array}, metadata ({} unless safetensors has some))."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file.")
  kind = file_kind(path)
  if kind == "safetensors":
    return read_safetensors(path)
  return (read_npz(path) if kind == "npz" else read_pth(path)), {}
