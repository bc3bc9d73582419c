"""Image sources: files resized with a warning or refused, records at a model's size with the
one resize policy, arrays checked; every unreadable image a reason, never a crash."""

import logging

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import data
from crfiqa_jax.data import sources


def _png(path, img):
  Image.fromarray(img).save(path)
  return str(path)


def test_files_resized_with_a_warning_or_refused_when_strict(tmp_path, caplog):
  img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
  paths = [_png(tmp_path / "a.png", img), str(tmp_path / "missing.png")]
  (tmp_path / "bad.png").write_bytes(b"not a png")
  paths.append(str(tmp_path / "bad.png"))
  src = sources.files_source(paths, image_size=20)
  assert len(src) == 3 and src.name(0) == paths[0]
  with caplog.at_level(logging.WARNING):
    got = src.load(0)
  np.testing.assert_array_equal(got, np.asarray(Image.fromarray(img).resize((20, 20),
                                                                           Image.BILINEAR)))
  assert "is not 20x20: resized" in caplog.text
  for i in (1, 2):
    with pytest.raises(sources.SkipImage, match="unreadable"):
      src.load(i)
  with pytest.raises(sources.SkipImage, match="is 40x40, not 20x20 \\(--strict\\)"):
    sources.files_source(paths, image_size=20, strict=True).load(0)
  np.testing.assert_array_equal(sources.files_source(paths).load(0), img)


def test_records_at_the_model_size_or_skipped_with_the_reason(tmp_path):
  rng = np.random.default_rng(1)
  imgs = [rng.integers(0, 255, s, dtype=np.uint8) for s in ((64, 64, 3), (16, 16, 3))]

  def gen():
    for img in imgs:
      yield {"image": data.encode_jpeg(img), "label": 0}
    yield {"image": b"garbage", "label": 0}

  data.write_records(tmp_path, {"test": gen}, num_classes=1, num_shards=1, progress=False)
  plain = sources.records_source(tmp_path, "test")
  assert plain.load(0).shape == (64, 64, 3) and plain.load(1).shape == (16, 16, 3)
  sized = sources.records_source(tmp_path, "test", image_size=32)
  want = np.asarray(Image.fromarray(plain.load(0)).resize((32, 32), Image.BILINEAR))
  np.testing.assert_array_equal(sized.load(0), want)
  with pytest.raises(sources.SkipImage, match=r"record 1: record image has shape \(16, 16, 3\)"):
    sized.load(1)
  with pytest.raises(sources.SkipImage, match="record 2: undecodable"):
    sized.load(2)
  assert sized.name(2).endswith("[test][2]")


def test_array_source_checks_its_input():
  imgs = np.zeros((3, 8, 8, 3), np.uint8)
  src = sources.array_source(imgs)
  assert len(src) == 3 and src.load(2).shape == (8, 8, 3)
  for bad in (imgs.astype(np.float32), imgs[..., :1], imgs[0]):
    with pytest.raises(ValueError, match="expected uint8 images"):
      sources.array_source(bad)
