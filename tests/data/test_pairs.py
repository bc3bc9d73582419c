"""Verification pairs of a split: every pair of a synthetic split, the stored list of a
`prepare bin` split, and clear errors."""

import numpy as np
import pytest

from crfiqa_jax import data
from crfiqa_jax.data import pairs


def _write(tmp_path, labels, test_pairs):
  def gen():
    for i, y in enumerate(labels):
      yield {"image": data.encode_jpeg(np.full((8, 8, 3), 10 * i, np.uint8)), "label": y}

  meta = {} if test_pairs is None else {"test_pairs": test_pairs}
  data.write_records(tmp_path, {"test": gen}, num_classes=max(labels) + 1, metadata=meta,
                     num_shards=1, progress=False)
  return tmp_path


def test_all_pairs_by_hand():
  a, b, genuine = pairs.all_pairs(np.array([7, 7, 3]))
  assert list(zip(a, b, genuine)) == [(0, 1, True), (0, 2, False), (1, 2, False)]


def test_all_and_stored_pairs(tmp_path):
  every = _write(tmp_path / "all", [0, 0, 1, 1], "all")
  a, b, g = pairs.read_pairs(every, "test")
  assert len(a) == 6 and g.sum() == 2 and np.all(a < b)
  assert not pairs.has_pairs(every)
  stored = _write(tmp_path / "stored", [0, 0, 1], [[0, 1, 1], [2, 0, 0]])
  a, b, g = pairs.read_pairs(stored)
  np.testing.assert_array_equal(a, [0, 2])
  np.testing.assert_array_equal(b, [1, 0])
  np.testing.assert_array_equal(g, [True, False])
  assert pairs.has_pairs(stored)
  ps = data.open_pairs(stored)
  img_a, img_b, same = ps[1]
  assert len(ps) == 2 and not same
  assert img_a.shape == (8, 8, 3) and abs(int(img_a.mean()) - 20) <= 2  # image 2
  assert abs(int(img_b.mean()) - 0) <= 2


def test_missing_and_broken_pairs_are_clear(tmp_path):
  with pytest.raises(ValueError, match="no verification pairs.*'test_pairs'"):
    pairs.read_pairs(_write(tmp_path / "none", [0, 1], None))
  with pytest.raises(ValueError, match="no verification pairs"):
    pairs.read_pairs(_write(tmp_path / "empty", [0, 1], []))
  with pytest.raises(ValueError, match="out of range for 2 images"):
    pairs.read_pairs(_write(tmp_path / "far", [0, 1], [[0, 5, 1]]))
