import json
from pathlib import Path

import numpy as np
import pytest

from crfiqa_jax.data import recordio

FIXTURES = Path(__file__).parent / "data" / "mxnet"  # written by mxnet 1.9.1's own writer


def _expected():
  return {int(k): v for k, v in json.loads((FIXTURES / "expected.json").read_text()).items()}


def test_reader_reads_mxnet_written_records():
  r = recordio.RecordIOReader(FIXTURES / "train.rec", FIXTURES / "train.idx")
  exp = _expected()
  assert r.keys == sorted(exp)
  for key, e in exp.items():
    header, data = recordio.unpack(r[key])
    assert header.flag == e["flag"] and header.id == e["id"] and header.id2 == e["id2"]
    np.testing.assert_allclose(np.atleast_1d(header.label), e["label"])
    assert data == bytes.fromhex(e["data"]), key
  # Key 3's payload holds the magic at aligned offsets: stored as 3 parts, read back whole.
  assert bytes.fromhex(exp[3]["data"]).count(recordio._MAGIC_BYTES) == 2
  # Sequential scan agrees with random access.
  assert [p for _, p in r] == [r[k] for k in r.keys]


def test_writer_reproduces_mxnet_bytes(tmp_path):
  exp = _expected()
  with recordio.RecordIOWriter(tmp_path / "t.rec", tmp_path / "t.idx") as w:
    for key, e in exp.items():
      label = e["label"][0] if e["flag"] == 0 else e["label"]
      header = recordio.IRHeader(e["flag"], label, e["id"], e["id2"])
      w.write(recordio.pack(header, bytes.fromhex(e["data"])), key)
  assert (tmp_path / "t.rec").read_bytes() == (FIXTURES / "train.rec").read_bytes()
  assert (tmp_path / "t.idx").read_text() == (FIXTURES / "train.idx").read_text()


def test_truncated_and_corrupt_files_name_the_spot(tmp_path):
  data = (FIXTURES / "train.rec").read_bytes()
  (tmp_path / "cut.rec").write_bytes(data[:2000])
  r = recordio.RecordIOReader(tmp_path / "cut.rec", None)
  with pytest.raises(recordio.RecordIOError, match=r"truncated record payload at offset"):
    list(r)
  with pytest.raises(recordio.RecordIOError, match="point past the end"):
    recordio.RecordIOReader(tmp_path / "cut.rec", FIXTURES / "train.idx")
  bad_idx = tmp_path / "bad.idx"
  bad_idx.write_text("0\t0\n1\t41\n")  # 41 is not a record start
  r = recordio.RecordIOReader(FIXTURES / "train.rec", bad_idx)
  with pytest.raises(recordio.RecordIOError, match="key 1: .*no RecordIO magic at offset 41"):
    r[1]
  (tmp_path / "junk.idx").write_text("zero\tone\n")
  with pytest.raises(recordio.RecordIOError, match="junk.idx:1"):
    recordio.read_idx(tmp_path / "junk.idx")
  with pytest.raises(recordio.RecordIOError, match="shorter than the 24-byte header"):
    recordio.unpack(b"abc")


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
  from crfiqa_jax.data import records
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
  example_parser = pytest.importorskip("tensorflow_datasets.core.example_parser")
  from array_record.python import array_record_data_source

  from crfiqa_jax.data import records
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
