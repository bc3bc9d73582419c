import numpy as np
import pytest

from crfiqa_jax import data
from crfiqa_jax import models
from crfiqa_jax.train import input_pipeline


@pytest.fixture(scope="module")
def unique_labels(tmp_path_factory):
  """40 records, label = index, image = constant gray level = index (so flips are visible
  only in the asymmetric column we paint)."""
  out = tmp_path_factory.mktemp("unique")

  def gen():
    for i in range(40):
      img = np.zeros((8, 8, 3), np.uint8)
      img[:, 0] = 255  # bright left column: a flip moves it to the right
      yield {"image": data.encode_jpeg(img),
             "label": i}

  data.write_records(out, {"train": gen}, num_classes=40, num_shards=3)
  return out


def _labels(ds, steps):
  it = iter(ds)
  return [next(it)["label"] for _ in range(steps)]


def test_each_example_once_per_epoch_across_processes(unique_labels):
  P, B = 4, 5  # global batch 20 → 2 steps per epoch
  per_proc = [_labels(input_pipeline.train_dataset(
      unique_labels, local_batch=B, seed=3, image_size=8, worker_count=0,
      process_index=p, process_count=P), steps=4) for p in range(P)]
  # The global batch is the same whatever the process count: one process with batch 20
  # reads the concatenation of the four processes' blocks, in process order.
  single = _labels(input_pipeline.train_dataset(
      unique_labels, local_batch=P * B, seed=3, image_size=8, worker_count=0,
      process_index=0, process_count=1), steps=2)
  for t in range(2):
    np.testing.assert_array_equal(np.concatenate([per_proc[p][t] for p in range(P)]),
                                  single[t])
  for epoch in range(2):
    seen = np.concatenate([np.concatenate(per_proc[p][2 * epoch: 2 * epoch + 2])
                           for p in range(P)])
    assert sorted(seen.tolist()) == list(range(40)), f"epoch {epoch}"
  first = np.concatenate([np.concatenate(per_proc[p][:2]) for p in range(P)])
  second = np.concatenate([np.concatenate(per_proc[p][2:4]) for p in range(P)])
  assert not np.array_equal(first, second)  # reshuffled each epoch


def test_flip_probability_and_dtype(unique_labels):
  it = iter(input_pipeline.train_dataset(unique_labels, local_batch=40, seed=0, image_size=8,
                                         worker_count=0, process_index=0, process_count=1))
  imgs = np.concatenate([next(it)["image"] for _ in range(10)])
  assert imgs.dtype == np.uint8 and imgs.shape == (400, 8, 8, 3)
  flipped = imgs[:, :, -1, 0] .mean(axis=1) > 128
  assert 0.4 < flipped.mean() < 0.6
  np.testing.assert_allclose(np.asarray(models.normalize(np.array([0, 255], np.uint8))),
                             [-1.0, 1.0])


def test_worker_state_restores_exactly(unique_labels):
  make = lambda: iter(input_pipeline.train_dataset(  # noqa: E731
      unique_labels, local_batch=4, seed=1, image_size=8, worker_count=2,
      process_index=0, process_count=1))
  it = make()
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  it2 = make()
  it2.set_state(state)
  got = [next(it2) for _ in range(4)]
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_wrong_image_size_is_a_clear_error(unique_labels):
  it = iter(input_pipeline.train_dataset(unique_labels, local_batch=4, seed=0, image_size=112,
                                         worker_count=0, process_index=0, process_count=1))
  with pytest.raises(ValueError, match="expected \\(112, 112, 3\\)"):
    next(it)
