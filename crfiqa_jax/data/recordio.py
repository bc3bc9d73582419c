"""MXNet indexed RecordIO (insightface's train.rec/train.idx), pure Python, no mxnet.

On-disk record: uint32 magic 0xCED7230A, uint32 lrec (top 3 bits: continuation flag, low 29
bits: length), `length` payload bytes, zero padding to a 4-byte boundary. A payload in which
the magic appears at a 4-byte-aligned offset is written as several parts (flag 1 first,
2 middle, 3 last; 0 = whole), the magic itself dropped at each split; the reader re-inserts
it. The .idx file is text, one "key<TAB>byte offset" per line.

Payload of an image record (mx.recordio.pack): header '<IfQQ' = (flag, label, id, id2); if
flag > 0 the label is the `flag` float32 values that follow the header (the header's label
field is then 0); then the encoded image.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LEN_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
  pass


class IRHeader(NamedTuple):
  flag: int
  label: float | np.ndarray
  id: int
  id2: int


def pack(header: IRHeader, data: bytes) -> bytes:
  """Payload bytes as mx.recordio.pack builds them."""
  label = header.label
  if np.ndim(label) == 0:
    return _HEADER.pack(0, float(label), header.id, header.id2) + data
  label = np.asarray(label, np.float32)
  return _HEADER.pack(len(label), 0.0, header.id, header.id2) + label.tobytes() + data


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
  """(header, remaining bytes) of a payload; array labels come back as float32 arrays."""
  if len(payload) < _HEADER.size:
    raise RecordIOError(f"payload of {len(payload)} bytes is shorter than the 24-byte header")
  flag, label, id1, id2 = _HEADER.unpack_from(payload)
  rest = payload[_HEADER.size:]
  if flag > 0:
    if len(rest) < 4 * flag:
      raise RecordIOError(f"header announces {flag} float labels but the payload ends early")
    label = np.frombuffer(rest[:4 * flag], np.float32).copy()
    rest = rest[4 * flag:]
  return IRHeader(flag, label, id1, id2), rest


def _encode_lrec(cflag: int, length: int) -> bytes:
  return struct.pack("<I", (cflag << 29) | length)


def encode_record(payload: bytes) -> bytes:
  """The on-disk bytes of one record, split at aligned magics as dmlc's writer does."""
  if len(payload) >= 1 << 29:
    raise RecordIOError("a record payload must be smaller than 512 MiB")
  out = []
  start = 0
  for i in range(0, (len(payload) // 4) * 4, 4):
    if payload[i:i + 4] == _MAGIC_BYTES:
      out += [_MAGIC_BYTES, _encode_lrec(1 if start == 0 else 2, i - start), payload[start:i]]
      start = i + 4
  out += [_MAGIC_BYTES, _encode_lrec(3 if start else 0, len(payload) - start), payload[start:]]
  pad = (-len(payload)) % 4
  return b"".join(out) + b"\0" * pad


class RecordIOWriter:
  """Writes train.rec and train.idx (key → offset) like mx.recordio.MXIndexedRecordIO('w')."""

  def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
    self._rec = open(rec_path, "wb")
    self._idx = open(idx_path, "w") if idx_path else None

  def write(self, payload: bytes, key: int | None = None):
    if self._idx is not None:
      if key is None:
        raise ValueError("an indexed writer needs a key per record")
      self._idx.write(f"{key}\t{self._rec.tell()}\n")
    self._rec.write(encode_record(payload))

  def close(self):
    self._rec.close()
    if self._idx is not None:
      self._idx.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class RecordIOReader:
  """Random access (via the .idx) and sequential reading of a .rec file.

  `reader[key]` → payload bytes; `reader.keys` in .idx order; iteration yields
  (offset, payload) by scanning the file. Every malformed spot raises RecordIOError naming
  the file and the offset (and key).
  """

  def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
    self.rec_path = Path(rec_path)
    if not self.rec_path.exists():
      raise FileNotFoundError(f"{self.rec_path} does not exist")
    self.size = self.rec_path.stat().st_size
    self.index: dict[int, int] = {}
    if idx_path is not None:
      self.index = read_idx(idx_path)
      bad = [(k, o) for k, o in self.index.items() if o < 0 or o + 8 > self.size]
      if bad:
        raise RecordIOError(f"{idx_path}: {len(bad)} keys point past the end of "
                            f"{self.rec_path} ({self.size} bytes), e.g. key {bad[0][0]} → "
                            f"offset {bad[0][1]}")
    self._fd = os.open(self.rec_path, os.O_RDONLY)

  @property
  def keys(self) -> list[int]:
    return list(self.index)

  def __len__(self):
    return len(self.index)

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_fd"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._fd = os.open(self.rec_path, os.O_RDONLY)

  def close(self):
    os.close(self._fd)

  def _pread(self, n: int, offset: int, what: str) -> bytes:
    data = os.pread(self._fd, n, offset)
    if len(data) != n:
      raise RecordIOError(f"{self.rec_path}: truncated {what} at offset {offset} "
                          f"(wanted {n} bytes, file has {self.size})")
    return data

  def read_at(self, offset: int) -> tuple[bytes, int]:
    """(payload, offset of the next record) for the record starting at `offset`."""
    parts = []
    pos = offset
    while True:
      magic, lrec = struct.unpack("<II", self._pread(8, pos, "record header"))
      if magic != MAGIC:
        raise RecordIOError(f"{self.rec_path}: no RecordIO magic at offset {pos} "
                            f"(found {magic:#010x}); the file or its .idx is corrupt")
      cflag, length = lrec >> 29, lrec & _LEN_MASK
      parts.append(self._pread(length, pos + 8, "record payload"))
      pos += 8 + length + (-length) % 4
      if cflag in (0, 3):
        break
      if cflag not in (1, 2) or (cflag == 1 and len(parts) > 1):
        raise RecordIOError(f"{self.rec_path}: bad continuation flag {cflag} at offset {pos}")
    if len(parts) > 1 and cflag != 3:
      raise RecordIOError(f"{self.rec_path}: split record at {offset} lacks its last part")
    return _MAGIC_BYTES.join(parts), pos

  def __getitem__(self, key: int) -> bytes:
    try:
      offset = self.index[key]
    except KeyError:
      raise KeyError(f"key {key} is not in the index of {self.rec_path}") from None
    try:
      return self.read_at(offset)[0]
    except RecordIOError as e:
      raise RecordIOError(f"key {key}: {e}") from None

  def __iter__(self) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < self.size:
      payload, nxt = self.read_at(pos)
      yield pos, payload
      pos = nxt


def read_idx(path: str | Path) -> dict[int, int]:
  index = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split("\t")
      try:
        index[int(parts[0])] = int(parts[1])
      except (ValueError, IndexError):
        raise RecordIOError(f"{path}:{n}: expected 'key<TAB>offset', got {line.strip()!r}") from None
  return index
