"""grain training pipeline over FaceRecords ArrayRecord files.

source → seeded global shuffle, reshuffled every epoch → flip decision (p=0.5) drawn per
element → blocks of the per-process batch → this process's blocks
(process_index::process_count) → decode (simplejpeg) and flip → worker processes.

Images leave the pipeline as uint8 [B, H, W, 3]; the (x - 127.5)/127.5 normalisation runs
inside the jitted step (crfiqa_jax.models.normalize), where XLA fuses it into the first
convolution, and the host→device copy is 4× smaller than float32. The iterator is a grain
DatasetIterator whose state (get_state/set_state) is checkpointed with the model, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
import signal

import grain
import jax
import numpy as np
from absl import flags

from crfiqa_jax import faults
from crfiqa_jax.data.codecs import decode_image, fit_image
from crfiqa_jax.data.records import RecordSource

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DrawFlip(grain.transforms.RandomMap):
  """Draws the horizontal-flip decision (probability p) on the global stream, so it does
  not depend on how many processes read the data."""

  p: float = 0.5

  def random_map(self, rec, rng: np.random.Generator):
    return dict(rec, flip=bool(rng.random() < self.p))


@dataclasses.dataclass(frozen=True)
class DecodeBatch(grain.transforms.Map):
  """A list of raw records → {"image": uint8 [B,H,W,3], "label": int32 [B]}, flipped where
  drawn; larger square crops are resized to image_size (codecs.fit_image)."""

  image_size: int

  def map(self, recs):
    images = np.empty((len(recs), self.image_size, self.image_size, 3), np.uint8)
    labels = np.empty(len(recs), np.int32)
    for i, rec in enumerate(recs):
      img = decode_image(rec["image"])
      if img.shape != (self.image_size, self.image_size, 3):
        img = fit_image(img, self.image_size)
      images[i] = img[:, ::-1] if rec.get("flip") else img
      labels[i] = rec["label"]
    return {"image": images, "label": labels}


def train_dataset(data_dir: str, *, local_batch: int, seed: int, image_size: int = 112,
                  num_epochs: int | None = None, flip: float = 0.5, worker_count: int = 2,
                  process_index: int | None = None, process_count: int | None = None,
                  split: str = "train") -> grain.IterDataset:
  """The training IterDataset for this process (batches of uint8 images and int32 labels).

  All processes see the same seeded global stream (shuffled anew each epoch, flips drawn
  per element), cut into blocks of `local_batch` raw records; process p takes blocks
  p, p+P, p+2P, ... and decodes only those. Global batch t is therefore the same P·B
  records in the same order whatever the number of processes, and every example is seen
  exactly once per epoch across processes. `num_epochs=None` repeats forever.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  source = RecordSource(data_dir, split)
  if len(source) < local_batch * process_count:
    raise ValueError(f"{data_dir} split {split!r} has {len(source)} records, fewer than one "
                     f"global batch ({local_batch * process_count})")
  ds = grain.MapDataset.source(source).seed(seed).shuffle()
  ds = ds.repeat(num_epochs)
  if flip:
    ds = ds.random_map(DrawFlip(flip))
  ds = ds.batch(local_batch, drop_remainder=True, batch_fn=list)
  ds = ds[process_index::process_count]
  ds = ds.map(DecodeBatch(image_size))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if worker_count > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=2),
                        worker_init_fn=_leave_stop_signals_to_the_trainer)
    # Workers hand batches over in shared memory, freed when their array is deleted. jax
    # may keep a host array it was given (zero-copy on CPU) past the end of the run, and
    # such blocks were reported leaked at exit: copy each batch out at once instead.
    it = it.map(_own_copy)
  return it


def _leave_stop_signals_to_the_trainer(worker_index: int, worker_count: int):
  """In each worker: SIGTERM and SIGINT are ignored (a terminal's Ctrl-C reaches the whole
  process group); the training process stops its workers when it has saved."""
  for s in faults.STOP_SIGNALS:
    signal.signal(s, signal.SIG_IGN)


def _own_copy(batch: dict) -> dict:
  return {k: np.array(v, copy=True) for k, v in batch.items()}


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return max(1, num_examples // global_batch)


def _absl_flags_parsed():
  # grain's multiprocessing reads absl flags; outside absl.app.run they are unparsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
