"""The on-disk face record format: a TFDS dataset of ArrayRecord files.

Every source (synthetic faces, insightface RecordIO, image folders, verification .bin
files) is written by one tensorflow-datasets builder, `FaceRecords`, without TensorFlow.
Each record is a serialized tf.train.Example with three features:

  image     bytes  the encoded image exactly as the source had it (JPEG normally)
  label     int64  contiguous identity id in [0, num_classes)
  metadata  text   JSON object: anything per-sample (source key, degradation, ...)

Layout on disk: OUT_DIR/face_records/1.0.0/{dataset_info.json, features.json,
face_records-<split>.array_record-0000i-of-0000n}. `tfds.builder_from_directory` and
`tfds.data_source` read it; so does `open_dataset` below, which also decodes images.
Dataset-level facts (num_classes, pairs of an evaluation split, the label mapping) live in
`info.metadata`. TFDS writes into an `incomplete.*` folder and renames it at the end, so an
interrupted conversion never looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source
from tqdm import tqdm

from crfiqa_jax.data.codecs import decode_image

log = logging.getLogger(__name__)

BUILDER_NAME = "face_records"


def features():
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "label": tfds.features.Scalar(dtype=np.int64),
      "metadata": tfds.features.Text(),
  })


@functools.cache
def _make_builder_class():

  class FaceRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Face images with identity labels; see crfiqa_jax.data.records."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "image bytes, int64 label, JSON metadata"}

    def __init__(self, *, splits: Mapping[str, Callable[[], Iterable[dict]]],
                 metadata: Mapping[str, Any], description: str = "", **kwargs):
      self._splits = splits
      self._metadata = dict(metadata)
      self._description = description
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=self._description, features=features(),
          metadata=tfds.core.MetadataDict(self._metadata), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {name: self._generate_examples(make) for name, make in self._splits.items()}

    def _generate_examples(self, make):
      for i, ex in enumerate(make()):
        meta = ex.get("metadata") or {}
        yield i, {"image": ex["image"], "label": int(ex["label"]),
                  "metadata": json.dumps(meta, sort_keys=True)}

  FaceRecords.__name__ = "FaceRecords"
  return FaceRecords


def dataset_dir(out_dir: str | Path) -> Path:
  return Path(out_dir) / BUILDER_NAME / "1.0.0"


def write_records(out_dir: str | Path, splits: Mapping[str, Callable[[], Iterable[dict]]], *,
                  num_classes: int, metadata: Mapping[str, Any] | None = None,
                  num_shards: int | None = None, description: str = "",
                  progress: bool = True) -> Path:
  """Writes a FaceRecords dataset and returns its directory.

  Args:
    out_dir: root folder; the dataset goes to out_dir/face_records/1.0.0.
    splits: split name → zero-argument callable yielding dicts with `image` (encoded bytes),
      `label` (int) and optional `metadata` (JSON-serialisable dict). Records keep the order
      in which they are yielded.
    num_classes: number of identities (labels must lie in [0, num_classes)).
    metadata: dataset-level JSON-serialisable facts stored in dataset_info.
    num_shards: ArrayRecord files per split (default: TFDS picks by size).
  """
  target = dataset_dir(out_dir)
  if (target / "dataset_info.json").exists():
    raise FileExistsError(f"{target} already holds a dataset; remove it or choose another OUT_DIR")
  builder_cls = _make_builder_class()
  meta = {"num_classes": int(num_classes), **dict(metadata or {})}
  builder = builder_cls(splits={k: _counted(k, g, progress) for k, g in splits.items()},
                        metadata=meta, description=description,
                        data_dir=str(out_dir), file_format="array_record")
  config = tfds.download.DownloadConfig(num_shards=num_shards) if num_shards else None
  # One progress bar of our own; TFDS's "Downloading and preparing dataset Unknown size"
  # banner and nested bars describe a download that does not happen here.
  tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(download_config=config)
  return target


def _counted(split: str, gen: Callable[[], Iterable[dict]], progress: bool):
  def inner():
    with tqdm(desc=f"writing {split}", unit="img", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
      for rec in gen():
        yield rec
        bar.update()
  return inner


def _resolve(path: str | Path) -> Path:
  path = Path(path)
  for cand in (path, dataset_dir(path)):
    if (cand / "dataset_info.json").exists():
      return cand
  found = sorted(path.glob("*/*/dataset_info.json")) if path.is_dir() else []
  if len(found) == 1:
    return found[0].parent
  raise FileNotFoundError(
      f"No face-record dataset at {path} (expected {dataset_dir(path)}/dataset_info.json). "
      "Create one with `python -m crfiqa_jax.prepare ...`.")


class RecordSource:
  """Random access to the raw records of one split (picklable, for grain workers).

  `source[i]` → {"image": bytes, "label": int, "metadata": str (JSON)}.
  """

  def __init__(self, path: str | Path, split: str = "train"):
    self.dir = _resolve(path)
    info = json.loads((self.dir / "dataset_info.json").read_text())
    splits = {s["name"]: s for s in info.get("splits", [])}
    if split not in splits:
      raise ValueError(f"{self.dir} has no split {split!r}; it has {sorted(splits)}")
    n_shards = len(splits[split].get("shardLengths", [])) or 1
    self.paths = [str(self.dir / f"{BUILDER_NAME}-{split}.array_record-{i:05d}-of-{n_shards:05d}")
                  for i in range(n_shards)]
    self.split = split
    self._reader = None
    self._len = sum(int(n) for n in splits[split].get("shardLengths", []))

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_reader"}

  def __setstate__(self, state):
    self.__dict__.update(state, _reader=None)

  def _open(self):
    if self._reader is None:
      self._reader = array_record_data_source.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    self._open()
    if not 0 <= index < self._len:
      raise IndexError(f"record {index} out of range [0, {self._len})")
    ex = parse_example(self._reader[index])
    try:
      return {"image": ex["image"], "label": int(ex["label"]),
              "metadata": ex.get("metadata", b"").decode()}
    except (KeyError, TypeError, UnicodeDecodeError) as e:
      raise ValueError(f"{self.paths} record {index} is not a FaceRecords example "
                       f"(features {sorted(ex)}): {e}") from None

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    return [self[i] for i in indices]

  def labels_and_metadata(self) -> tuple[np.ndarray, list[dict]]:
    """Labels [N] and per-record metadata dicts, read without decoding any image."""
    recs = [self[i] for i in range(len(self))]
    return (np.array([r["label"] for r in recs], np.int64),
            [json.loads(r["metadata"] or "{}") for r in recs])


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError("truncated varint in a serialized tf.train.Example")
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result, pos
    shift += 7


def _fields(buf: bytes):
  """Yields (field number, wire type, value) of one protobuf message: value is an int for
  varints and a bytes slice for length-delimited fields (fixed32/64 are skipped)."""
  pos = 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 2:
      n, pos = _varint(buf, pos)
      value, pos = buf[pos:pos + n], pos + n
    elif wire in (1, 5):
      value, pos = None, pos + (8 if wire == 1 else 4)
    else:
      raise ValueError(f"unsupported protobuf wire type {wire} in a tf.train.Example")
    yield number, wire, value


def parse_example(buf: bytes) -> dict:
  """A serialized tf.train.Example → {name: bytes or int} for single-value bytes and int64
  features (what FaceRecords stores: image, label, metadata).

  Example{1: Features{1: map entry{1: name, 2: Feature{1: BytesList{1: bytes*},
  3: Int64List{1: int64* (packed or not)}}}}}. A small pure-Python reader: the read path
  needs neither TensorFlow nor tensorflow-datasets (tests/test_recordio.py checks it against
  tensorflow-datasets' own parser).
  """
  out = {}
  for n, _, features in _fields(buf):
    if n != 1:
      continue
    for m, _, entry in _fields(features):
      if m != 1:
        continue
      name, feature = b"", b""
      for k, _, v in _fields(entry):
        if k == 1:
          name = v
        elif k == 2:
          feature = v
      for kind, _, lst in _fields(feature):
        if kind == 1:  # BytesList
          vals = [v for f, _, v in _fields(lst) if f == 1]
        elif kind == 3:  # Int64List
          vals = []
          for f, wire, v in _fields(lst):
            if f != 1:
              continue
            if wire == 0:
              vals.append(v)
            else:  # packed
              pos = 0
              while pos < len(v):
                x, pos = _varint(v, pos)
                vals.append(x)
          vals = [v - (1 << 64) if v >= 1 << 63 else v for v in vals]
        else:
          continue
        out[name.decode()] = vals[0] if len(vals) == 1 else vals
  return out


def read_info(path: str | Path) -> dict:
  """Dataset-level metadata (num_classes, ...) plus split sizes."""
  d = _resolve(path)
  info = json.loads((d / "dataset_info.json").read_text())
  meta_file = d / "metadata.json"
  meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
  meta["splits"] = {s["name"]: sum(int(n) for n in s.get("shardLengths", []))
                    for s in info.get("splits", [])}
  return meta


class FaceDataset(Sequence):
  """`open_dataset` result: dataset[i] → {"image": uint8 [H,W,3], "label": int,
  "metadata": dict}; also `.num_classes`, `.info` and `.source` (raw records)."""

  def __init__(self, path: str | Path, split: str = "train"):
    self.source = RecordSource(path, split)
    self.info = read_info(path)
    self.num_classes = int(self.info.get("num_classes", 0))

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    rec = self.source[index]
    return {"image": decode_image(rec["image"]), "label": rec["label"],
            "metadata": json.loads(rec["metadata"] or "{}")}

  def __iter__(self) -> Iterator[dict]:
    for i in range(len(self)):
      yield self[i]


def open_dataset(path: str | Path, split: str = "train") -> FaceDataset:
  """Opens what `write_records` / `python -m crfiqa_jax.prepare` wrote."""
  return FaceDataset(path, split)
