"""grain training pipeline over FaceRecords ArrayRecord files.

source → seeded global shuffle, reshuffled every epoch → this process's slice
(process_index::process_count) → decode (simplejpeg) → random horizontal flip p=0.5 →
batch(per-process batch, drop_remainder) → worker processes.

Images leave the pipeline as uint8 [B, H, W, 3]; the (x - 127.5)/127.5 normalisation runs
inside the jitted step (`normalize`), where XLA fuses it into the first convolution and the
host→device copy is 4× smaller than float32. The iterator is a grain DatasetIterator whose
state (get_state/set_state) is checkpointed with the model, so a resumed run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax.data.records import RecordSource, decode_image

log = logging.getLogger(__name__)


def normalize(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] → float32 [-1, 1], as the released code's (x - 127.5) / 127.5."""
  return (images.astype(jnp.float32) - 127.5) / 127.5


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
  """Raw record → {"image": uint8 [H,W,3], "label": int32}; checks the image size."""

  image_size: int

  def map(self, rec):
    img = decode_image(rec["image"])
    if img.shape != (self.image_size, self.image_size, 3):
      raise ValueError(f"record image has shape {img.shape}, expected "
                       f"({self.image_size}, {self.image_size}, 3); re-run prepare with "
                       "aligned faces of that size")
    return {"image": img, "label": np.int32(rec["label"])}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
  """Horizontal flip with probability p (the paper's only augmentation)."""

  p: float = 0.5

  def random_map(self, ex, rng: np.random.Generator):
    if rng.random() < self.p:
      ex = dict(ex, image=np.ascontiguousarray(ex["image"][:, ::-1]))
    return ex


def train_dataset(data_dir: str, *, local_batch: int, seed: int, image_size: int = 112,
                  num_epochs: int | None = None, flip: float = 0.5, worker_count: int = 2,
                  process_index: int | None = None, process_count: int | None = None,
                  split: str = "train") -> grain.IterDataset:
  """The training IterDataset for this process (batches of uint8 images and int32 labels).

  Every process shuffles the whole split with the same seed and keeps every
  process_count-th element, so each example is seen exactly once per epoch across
  processes. `num_epochs=None` repeats forever.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  source = RecordSource(data_dir, split)
  if len(source) < local_batch * process_count:
    raise ValueError(f"{data_dir} split {split!r} has {len(source)} records, fewer than one "
                     f"global batch ({local_batch * process_count})")
  ds = grain.MapDataset.source(source).seed(seed).shuffle()
  ds = ds.repeat(num_epochs)
  ds = ds[process_index::process_count]
  ds = ds.map(Decode(image_size))
  if flip:
    ds = ds.random_map(RandomFlip(flip))
  ds = ds.batch(local_batch, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if worker_count > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=2))
  return it


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return max(1, num_examples // global_batch)


def _absl_flags_parsed():
  # grain's multiprocessing reads absl flags; outside absl.app.run they are unparsed.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
