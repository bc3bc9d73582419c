import argparse
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import data, prepare
from crfiqa_jax.data import converters, recordio

BIN_FIXTURE = Path(__file__).parent / "data" / "tiny_verification.bin"


def _jpeg(value, size=112, mode="RGB"):
  arr = np.full((size, size, 3), value, np.uint8)
  im = Image.fromarray(arr)
  if mode != "RGB":
    im = im.convert(mode)
  buf = io.BytesIO()
  im.save(buf, "JPEG", quality=90)
  return buf.getvalue()


def _args(kind, src, out, **kw):
  return argparse.Namespace(kind=kind, src=str(src), out=str(out), image_size=112, shards=0, **kw)


@pytest.fixture
def insightface_dir(tmp_path):
  """train.rec/idx/property with labels {5, 9} (non-contiguous), a grayscale JPEG, a 64×64
  image, an undecodable record, and identity-range records after the images."""
  src = tmp_path / "faces_casia"
  src.mkdir()
  images = [(5, _jpeg(10)), (5, _jpeg(20)), (9, _jpeg(30, mode="L")), (9, _jpeg(40, size=64)),
            (9, b"\xff\xd8 this is not a jpeg"), (9, _jpeg(50))]
  n = len(images)
  with recordio.RecordIOWriter(src / "train.rec", src / "train.idx") as w:
    w.write(recordio.pack(recordio.IRHeader(2, [n + 1, n + 3], 0, 0), b""), 0)
    for k, (lab, img) in enumerate(images, start=1):
      w.write(recordio.pack(recordio.IRHeader(0, float(lab), k, 0), img), k)
    w.write(recordio.pack(recordio.IRHeader(2, [1, 3], 0, 0), b""), n + 1)
    w.write(recordio.pack(recordio.IRHeader(2, [3, 7], 0, 0), b""), n + 2)
  (src / "property").write_text("10,112,112")
  return src


def test_insightface_conversion_counts_and_remaps(insightface_dir, tmp_path):
  report = prepare.run(_args("insightface", insightface_dir, tmp_path / "out"))
  assert "read 6, wrote 4, skipped 2" in report
  assert "skipped: undecodable image: 1" in report and "key 5" in report
  assert "skipped: size is not 112x112: 1" in report and "converted: not RGB: 1" in report
  ds = data.open_dataset(tmp_path / "out")
  assert len(ds) == 4 and ds.num_classes == 2
  assert [r["label"] for r in ds] == [0, 0, 1, 1]
  assert [r["metadata"]["key"] for r in ds] == [1, 2, 3, 6]
  assert all(r["image"].shape == (112, 112, 3) for r in ds)
  assert ds.info["label_map"] == {"5": 0, "9": 1}
  assert ds.info["conversion"]["written"] == 4
  import tensorflow_datasets as tfds
  src = tfds.builder_from_directory(str(data.records.dataset_dir(tmp_path / "out")))
  assert src.as_data_source("train")[3]["label"] == 1


def test_insightface_bad_files_are_clear_errors(insightface_dir, tmp_path):
  (insightface_dir / "property").write_text("7,112,112")
  with pytest.raises(ValueError, match="key 3: label 9 out of range for num_classes=7"):
    prepare.run(_args("insightface", insightface_dir, tmp_path / "o1"))
  rec = insightface_dir / "train.rec"
  rec.write_bytes(rec.read_bytes()[:300])
  with pytest.raises(recordio.RecordIOError, match="point past the end"):
    prepare.run(_args("insightface", insightface_dir, tmp_path / "o2"))
  assert not (tmp_path / "o2" / "face_records" / "1.0.0" / "dataset_info.json").exists()


def test_folder_conversion(tmp_path):
  src = tmp_path / "faces"
  for name, values in (("bob", [10, 20]), ("alice", [30]), ("empty", []), ("zed", [60])):
    (src / name).mkdir(parents=True)
    for i, v in enumerate(values):
      (src / name / f"{i}.jpg").write_bytes(_jpeg(v))
  Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(src / "zed" / "x.png")
  (src / "bob" / "notes.txt").write_text("not an image")
  (src / "empty" / "readme.md").write_text("nothing")
  report = prepare.run(_args("folder", src, tmp_path / "out"))
  assert "wrote 5" in report
  assert "skipped: not an image file: 2" in report
  assert "skipped: identity folder without usable images: 1" in report
  ds = data.open_dataset(tmp_path / "out")
  assert ds.info["classes"] == ["alice", "bob", "zed"] and ds.num_classes == 3
  assert sorted((r["label"], r["metadata"]["path"]) for r in ds) == [
      (0, "alice/0.jpg"), (1, "bob/0.jpg"), (1, "bob/1.jpg"), (2, "zed/0.jpg"), (2, "zed/x.png")]


def test_bin_fixture_in_real_layout(tmp_path):
  bins, issame = converters.load_bin(BIN_FIXTURE)  # a Python-2 pickle of str images
  assert len(bins) == 6 and issame == [True, False, True]
  prepare.run(_args("bin", BIN_FIXTURE, tmp_path / "lfw"))
  pairs = data.open_pairs(tmp_path / "lfw")
  assert len(pairs) == 3 and pairs.genuine.tolist() == [True, False, True]
  a, b, same = pairs[1]
  assert a.shape == (112, 112, 3) and not same
  np.testing.assert_array_equal(a, data.decode_image(bins[2]))


def test_malicious_bin_never_executes(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      import os
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "evil.bin"
  path.write_bytes(pickle.dumps(([b"x", Evil()], [True])))
  with pytest.raises(converters.UnsafePickleError, match="refusing global"):
    converters.load_bin(path)
  assert not marker.exists()
  path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
  with pytest.raises(ValueError, match="3 images for 1 pairs"):
    converters.load_bin(path)


def test_existing_dataset_is_not_overwritten(tmp_path):
  prepare.run(_args("bin", BIN_FIXTURE, tmp_path / "lfw"))
  with pytest.raises(FileExistsError, match="already holds a dataset"):
    prepare.run(_args("bin", BIN_FIXTURE, tmp_path / "lfw"))
