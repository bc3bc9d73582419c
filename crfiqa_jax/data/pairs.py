"""Verification pairs of a prepared split: the one reader of pairs.

A split's pairs live in the dataset metadata as "<split>_pairs": a list [[a, b, genuine],
...] of record indices (`prepare bin`, `prepare celeba`), or "all" (`prepare synthetic`):
every unordered pair of distinct images, genuine when their labels agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crfiqa_jax.data.records import FaceDataset, RecordSource, read_info


def all_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every unordered pair of distinct images (a < b): (a [P], b [P], genuine [P])."""
  labels = np.asarray(labels)
  a, b = np.triu_indices(len(labels), k=1)
  return a, b, labels[a] == labels[b]


def has_pairs(path: str | Path, split: str = "test") -> bool:
  """Whether the split stores a list of pairs (not "all", not absent)."""
  return isinstance(read_info(path).get(f"{split}_pairs"), list)


def read_pairs(path: str | Path, split: str = "test"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(a [P], b [P], genuine bool [P]) of the split's pairs, no image decoded. Raises a
  ValueError naming the dataset when the split has no pairs or they point past it."""
  pairs = read_info(path).get(f"{split}_pairs")
  if pairs is None or (isinstance(pairs, list) and not pairs):
    raise ValueError(f"{path} split {split!r} has no verification pairs (metadata "
                     f"'{split}_pairs'): use a `prepare celeba`, `prepare bin` or `prepare "
                     "synthetic` output")
  if pairs == "all":
    return all_pairs(RecordSource(path, split).labels_and_metadata()[0])
  arr = np.asarray(pairs, np.int64).reshape(-1, 3)
  n = len(RecordSource(path, split))
  if arr[:, :2].max() >= n or arr[:, :2].min() < 0:
    raise ValueError(f"{path}: pair indices out of range for {n} images")
  return arr[:, 0], arr[:, 1], arr[:, 2].astype(bool)


class PairSet:
  """A verification split: `images` (a FaceDataset) and pair arrays `a`, `b`, `genuine`."""

  def __init__(self, images: FaceDataset, a: np.ndarray, b: np.ndarray, genuine: np.ndarray):
    self.images, self.a, self.b, self.genuine = images, a, b, genuine

  def __len__(self) -> int:
    return len(self.a)

  def __getitem__(self, i: int):
    """(image_a, image_b, genuine) of pair i, images decoded uint8 [H, W, 3]."""
    return self.images[int(self.a[i])]["image"], self.images[int(self.b[i])]["image"], \
        bool(self.genuine[i])


def open_pairs(path: str | Path, split: str = "test") -> PairSet:
  """The comparison pairs of an evaluation split (see the module docstring)."""
  return PairSet(FaceDataset(path, split), *read_pairs(path, split))
