"""The FaceRecords format: written by the TFDS builder, read back by the small protobuf
reader (checked against tensorflow-datasets' own parser), dataset facts, decoded views."""

import numpy as np
import pytest
from array_record.python import array_record_data_source
from tensorflow_datasets.core import example_parser

from crfiqa_jax.data import records


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:  # a length-delimited protobuf field
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def test_parse_example_hand_encoded():
  bytes_feature = _ld(1, _ld(1, b"\xff\xd8jpeg"))
  packed = _ld(3, _ld(1, _varint(7) + _varint(300)))                      # two values, packed
  unpacked = _ld(3, _varint(1 << 3 | 0) + _varint((1 << 64) - 5))         # one value: -5
  entries = [_ld(1, _ld(1, b"image") + _ld(2, bytes_feature)),
             _ld(1, _ld(1, b"ids") + _ld(2, packed)),
             _ld(1, _ld(1, b"label") + _ld(2, unpacked))]
  ex = records.parse_example(_ld(1, b"".join(entries)))
  assert ex == {"image": b"\xff\xd8jpeg", "ids": [7, 300], "label": -5}
  with pytest.raises(ValueError, match="truncated varint"):
    records.parse_example(b"\x0a\x80")


def test_parse_example_agrees_with_tensorflow_datasets(tiny_records):
  src = records.RecordSource(tiny_records, "train")
  parser = example_parser.ExampleParserNp(records.features().get_serialized_info())
  raw = array_record_data_source.ArrayRecordDataSource(src.paths)
  for i in range(len(src)):
    want = parser.parse_example(raw[i])
    got = src[i]
    meta = want["metadata"]
    assert got["image"] == want["image"]
    assert got["label"] == int(want["label"])
    assert got["metadata"] == (meta.decode() if isinstance(meta, bytes) else meta)


def test_written_records_read_back_in_order_with_facts(tmp_path):
  def gen():
    for i in range(7):
      yield {"image": bytes([i]) * 5, "label": i % 3, "metadata": {"i": i}}

  def two():
    yield from ({"image": b"t", "label": 0}, {"image": b"u", "label": 1})

  out = records.write_records(tmp_path, {"train": gen, "test": two},
                              num_classes=3, metadata={"note": "x"}, num_shards=2,
                              progress=False)
  assert out == records.dataset_dir(tmp_path)
  src = records.RecordSource(tmp_path, "train")
  assert len(src) == 7 and len(src.paths) == 2
  assert [src[i]["image"] for i in range(7)] == [bytes([i]) * 5 for i in range(7)]
  labels, meta = src.labels_and_metadata()
  np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2, 0])
  assert [m["i"] for m in meta] == list(range(7))
  info = records.read_info(tmp_path)
  assert info["num_classes"] == 3 and info["note"] == "x"
  assert info["splits"] == {"train": 7, "test": 2}
  assert records.RecordSource(tmp_path, "test")[0]["metadata"] == "{}"
  with pytest.raises(IndexError, match="out of range"):
    src[7]
  with pytest.raises(ValueError, match="no split 'val'"):
    records.RecordSource(tmp_path, "val")
  with pytest.raises(FileExistsError, match="already holds a dataset"):
    records.write_records(tmp_path, {"train": gen}, num_classes=3, progress=False)
  with pytest.raises(FileNotFoundError, match="prepare"):
    records.RecordSource(tmp_path / "nothing")


def test_face_dataset_decodes_and_slices(tiny_records):
  ds = records.open_dataset(tiny_records)
  assert len(ds) == 160 and ds.num_classes == 10
  first = ds[0]
  assert first["image"].shape == (32, 32, 3) and first["image"].dtype == np.uint8
  assert first["label"] == 0 and first["metadata"] == {"index": 0}
  assert [x["label"] for x in ds[3:6]] == [3, 4, 5]
