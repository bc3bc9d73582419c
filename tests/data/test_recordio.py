import json

import numpy as np
import pytest

from crfiqa_jax.data import recordio

from helpers import FIXTURES

MXNET = FIXTURES / "mxnet"  # written by mxnet 1.9.1's own writer


def _expected():
  return {int(k): v for k, v in json.loads((MXNET / "expected.json").read_text()).items()}


def test_reader_reads_mxnet_written_records():
  r = recordio.RecordIOReader(MXNET / "train.rec", MXNET / "train.idx")
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
  assert (tmp_path / "t.rec").read_bytes() == (MXNET / "train.rec").read_bytes()
  assert (tmp_path / "t.idx").read_text() == (MXNET / "train.idx").read_text()


def test_truncated_and_corrupt_files_name_the_spot(tmp_path):
  data = (MXNET / "train.rec").read_bytes()
  (tmp_path / "cut.rec").write_bytes(data[:2000])
  r = recordio.RecordIOReader(tmp_path / "cut.rec", None)
  with pytest.raises(recordio.RecordIOError, match=r"truncated record payload at offset"):
    list(r)
  with pytest.raises(recordio.RecordIOError, match="point past the end"):
    recordio.RecordIOReader(tmp_path / "cut.rec", MXNET / "train.idx")
  bad_idx = tmp_path / "bad.idx"
  bad_idx.write_text("0\t0\n1\t41\n")  # 41 is not a record start
  r = recordio.RecordIOReader(MXNET / "train.rec", bad_idx)
  with pytest.raises(recordio.RecordIOError, match="key 1: .*no RecordIO magic at offset 41"):
    r[1]
  (tmp_path / "junk.idx").write_text("zero\tone\n")
  with pytest.raises(recordio.RecordIOError, match="junk.idx:1"):
    recordio.read_idx(tmp_path / "junk.idx")
  with pytest.raises(recordio.RecordIOError, match="shorter than the 24-byte header"):
    recordio.unpack(b"abc")
