"""A TensorBoard scalar writer with no dependencies (no TensorFlow, no torch).

TensorBoard reads `events.out.tfevents.*` files: TFRecords (length, masked CRC32C
of the length, data, masked CRC32C of the data) whose data is a serialized
`tensorflow.Event` protobuf. Scalars need only a few proto fields, which are
encoded here by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }

(`clu.metric_writers` and `flax.metrics.tensorboard` import TensorFlow; tensorboardX
imports torch when it is installed, which costs seconds per process.)
"""
from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord uses."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1   # int64 two's complement
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(num: int, wire: int) -> bytes:
  return _varint((num << 3) | wire)


def _bytes_field(num: int, payload: bytes) -> bytes:
  return _field(num, 2) + _varint(len(payload)) + payload


def encode_event(step: int, wall_time: float, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
  """A serialized Event proto holding `scalars` (tag -> float32) at `step`."""
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    out += _bytes_field(5, values)
  return out


def tfrecord(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


def read_tfrecords(path: str) -> list[bytes]:
  """The records of a TFRecord file; raises ValueError on a CRC mismatch."""
  out = []
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    header = data[i:i + 8]
    (n,) = struct.unpack("<Q", header)
    if struct.unpack("<I", data[i + 8:i + 12])[0] != masked_crc(header):
      raise ValueError(f"{path}: bad length CRC at byte {i}.")
    rec = data[i + 12:i + 12 + n]
    if struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != masked_crc(rec):
      raise ValueError(f"{path}: bad data CRC at byte {i}.")
    out.append(rec)
    i += 16 + n
  return out


class EventWriter:
  """Appends scalar events to `<logdir>/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
    self._f = open(self.path, "ab")
    self._f.write(tfrecord(encode_event(0, time.time(), file_version="brain.Event:2")))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._f.write(tfrecord(encode_event(step, time.time(), values)))

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()
