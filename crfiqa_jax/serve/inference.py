"""Inference: one streaming, sharded path from images to embeddings and quality.

Everything after training runs through `stream` (score, evaluate, analyze, ijbc and the
held-out reports):

* a *source* (crfiqa_jax.data.sources) gives random access to N images (files, prepared
  record splits, aligned IJB-C crops, photos' faces, an in-memory array); `load(i)` decodes
  one image or raises `SkipImage(reason)`;
* images are decoded by a bounded pool of background threads (JPEG/PNG decoders release
  the GIL) a few batches ahead of the devices, so decoding overlaps compute;
* each batch is padded to a fixed size (one compilation) and split over every local device
  of a 1-D mesh; the forward is dispatched asynchronously and the previous batch's results
  are read back while the next one runs;
* with several processes each process takes a contiguous slice of the inputs
  (`process_slice`) and `gather` reassembles the results in input order;
* memory stays bounded: at most `prefetch` decoded batches exist at a time, and only what a
  consumer keeps (e.g. float16 features, or an on-disk memmap) grows with N.

A *predictor* is any callable `predictor(uint8 [B, H, W, 3] RGB) → (embedding [B, D],
quality [B])` with attributes `image_size`, `embedding_dim` and `batch_multiple` (the
batch must be a multiple of it). `FlaxPredictor` is the Flax model on a device mesh; an
exported ONNX model serves through the same protocol (crfiqa_jax.serve.onnx_predictor), and
crfiqa_jax.serve.engines.load_predictor picks one for any model path.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from crfiqa_jax import models, sharding
from crfiqa_jax.data.sources import ImageSource, SkipImage

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The Flax predictor.
# ---------------------------------------------------------------------------------------

def host_local(tree):
  """numpy copies of (replicated) jax arrays, also when they span several processes."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        raise ValueError("host_local needs replicated arrays; this one is sharded")
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def _forward(model, variables, images):
  emb, quality = model.apply(variables, models.normalize(images), train=False)
  return emb, quality


class FlaxPredictor:
  """A Flax (embedding, quality) model on a 1-D mesh over this process's devices: the batch
  is split over them, the variables replicated. Calls return jax arrays (asynchronous)."""

  def __init__(self, model, variables, *, image_size: int = 112, devices=None):
    self.mesh = sharding.make_mesh(jax.local_devices() if devices is None else devices)
    repl, split = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(sharding.DATA))
    self.model = model
    self.variables = jax.device_put(host_local(variables), repl)
    self.image_size = image_size
    self.embedding_dim = model.embedding_dim
    self.batch_multiple = self.mesh.size
    self._split = split
    self._fn = jax.jit(functools.partial(_forward, model), in_shardings=(repl, split),
                       out_shardings=(split, split))

  def __call__(self, images: np.ndarray):
    return self._fn(self.variables, jax.device_put(images, self._split))


# ---------------------------------------------------------------------------------------
# Streaming.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Batch:
  """Results for consecutive input positions `indices` (those that loaded)."""

  indices: np.ndarray               # int64 [b]
  embedding: np.ndarray | None      # float32 [b, D], raw (not normalised)
  embedding_flip: np.ndarray | None  # float32 [b, D] of the mirrored images, if asked
  quality: np.ndarray               # float32 [b]
  failures: dict                    # {position: reason} of this batch's positions
  positions: range = range(0)       # every position this batch covered (loaded or not)


def process_slice(n: int, index: int | None = None, count: int | None = None) -> range:
  """This process's contiguous share of n inputs (sizes differ by at most one)."""
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  bounds = np.linspace(0, n, count + 1).round().astype(int)
  return range(int(bounds[index]), int(bounds[index + 1]))


def _progress(total: int, desc: str, enabled: bool | None):
  if enabled is None:
    enabled = jax.process_index() == 0 and total > 0
  return tqdm(total=total, unit="img", desc=desc, disable=not enabled, file=sys.stderr,
              dynamic_ncols=True, smoothing=0.1)


def stream(predictor, source: ImageSource, *, positions: Sequence[int] | None = None,
           batch_size: int = 64, flip: bool = False, workers: int = 4, prefetch: int = 3,
           progress: bool | None = None, desc: str = "inference") -> Iterator[Batch]:
  """Yields one Batch per `batch_size` consecutive positions, in order.

  `positions` defaults to every index of `source`. Images are decoded by `workers` threads
  up to `prefetch` batches ahead; the forward of batch k runs while batch k−1 is read back.
  """
  positions = range(len(source)) if positions is None else positions
  mult = getattr(predictor, "batch_multiple", 1)
  batch_size = max(mult, -(-batch_size // mult) * mult)  # a multiple of the device count
  chunks = [positions[s:s + batch_size] for s in range(0, len(positions), batch_size)]
  bar = _progress(len(positions), desc, progress)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool, \
      concurrent.futures.ThreadPoolExecutor(max_workers=max(1, prefetch)) as ahead:
    decoding = collections.deque(ahead.submit(_decode, pool, source, c)
                                 for c in chunks[:prefetch])
    inflight = None
    try:
      for k, chunk in enumerate(chunks):
        loaded = decoding.popleft().result()
        if k + prefetch < len(chunks):
          decoding.append(ahead.submit(_decode, pool, source, chunks[k + prefetch]))
        item = _dispatch(predictor, chunk, loaded, batch_size, flip)
        if inflight is not None:
          yield _collect(inflight, bar)
        inflight = item
      if inflight is not None:
        yield _collect(inflight, bar)
    finally:
      for f in decoding:
        f.cancel()
      bar.close()


def _load(source: ImageSource, i: int):
  """(image, None), or (None, the reason it was skipped)."""
  try:
    return source.load(i), None
  except SkipImage as e:
    return None, str(e)


def _decode(pool, source: ImageSource, chunk) -> list:
  return list(pool.map(functools.partial(_load, source), chunk))


@dataclasses.dataclass
class _InFlight:
  """A dispatched batch: its positions, those that loaded, failures, the forward's output
  (jax arrays still computing, or numpy), or None when nothing loaded."""

  chunk: Sequence[int]
  loaded: list
  failures: dict
  out: tuple | None


def _dispatch(predictor, chunk, loaded, batch_size: int, flip: bool) -> _InFlight:
  """Starts the forward of one decoded chunk, padded to batch_size (one compiled shape)."""
  ok = [(i, img) for i, (img, _) in zip(chunk, loaded) if img is not None]
  fails = {i: why for i, (img, why) in zip(chunk, loaded) if img is None}
  if not ok:
    return _InFlight(chunk, [], fails, None)
  shapes = {img.shape for _, img in ok}
  if len(shapes) > 1:
    raise ValueError(f"images of one batch differ in shape: {sorted(shapes)}")
  imgs = np.stack([img for _, img in ok])
  pad = batch_size - len(imgs)
  if pad:
    imgs = np.concatenate([imgs, np.zeros((pad,) + imgs.shape[1:], np.uint8)])
  out = (predictor(imgs),)
  if flip:
    out += (predictor(np.ascontiguousarray(imgs[:, :, ::-1])),)
  return _InFlight(chunk, [i for i, _ in ok], fails, out)


def _collect(item: _InFlight, bar) -> Batch:
  """Waits for a dispatched batch and reads its results back."""
  n = len(item.loaded)
  emb = emb_f = None
  if item.out is None:
    q = np.zeros(0, np.float32)
  else:
    emb, q = (np.asarray(v, np.float32)[:n] for v in item.out[0])
    if len(item.out) > 1:
      emb_f = np.asarray(item.out[1][0], np.float32)[:n]
  bar.update(len(item.chunk))
  return Batch(np.asarray(item.loaded, np.int64), emb, emb_f, q, item.failures, item.chunk)


FEATURES = ("concat", "sum", "raw", "none")


def extract(predictor, source: ImageSource, *, features: str = "concat",
            batch_size: int = 64, dtype=np.float32, memmap: str | Path | None = None,
            positions: Sequence[int] | None = None, gather: bool = True,
            progress: bool | None = None, desc: str = "inference"):
  """(features [N, F] or None, quality [N], failures {position: reason}) over `source`.

  features: "concat" — the released evaluation's FR feature: the L2-normalised embeddings
  of the image and of its mirror, concatenated (F = 2D); "sum" — raw embedding + raw
  mirrored embedding (IJB-C, as the released eval_ijbc_qs.py; F = D); "raw" — the raw
  embedding, no mirror (F = D); "none" — quality only. Rows of images that failed to load
  are NaN. `dtype` float16 halves the memory of large feature sets; `memmap` keeps them in
  a file instead. With several processes and `gather`, every process works on its
  `process_slice` and all of them get the full results.
  """
  if features not in FEATURES:
    raise ValueError(f"features={features!r}; choose one of {FEATURES}")
  n = len(source)
  if positions is None:
    positions = process_slice(n) if gather and jax.process_count() > 1 else range(n)
  dim = {"concat": 2, "sum": 1, "raw": 1, "none": 0}[features] * predictor.embedding_dim
  if memmap is not None and dim:
    feats = np.lib.format.open_memmap(memmap, mode="w+", dtype=dtype, shape=(n, dim))
    feats[:] = np.nan
  else:
    feats = np.full((n, dim), np.nan, dtype) if dim else None
  quality = np.full(n, np.nan, np.float32)
  failures: dict = {}
  for b in stream(predictor, source, positions=positions, batch_size=batch_size,
                  flip=features in ("concat", "sum"), progress=progress, desc=desc):
    failures.update(b.failures)
    if not len(b.indices):
      continue
    quality[b.indices] = b.quality
    if features == "concat":
      feats[b.indices] = np.concatenate([models.l2_normalize(b.embedding),
                                         models.l2_normalize(b.embedding_flip)], 1)
    elif features == "sum":
      feats[b.indices] = b.embedding + b.embedding_flip
    elif features == "raw":
      feats[b.indices] = b.embedding
  if gather and jax.process_count() > 1:
    quality, feats, failures = _gather(quality, feats, failures, positions)
  return feats, quality, failures


def _gather(quality, feats, failures, positions):
  """Every process's slice → full arrays on every process (input order)."""
  lo, hi = positions[0] if len(positions) else 0, (positions[-1] + 1) if len(positions) else 0
  size = np.asarray(multihost_utils.process_allgather(np.array([lo, hi])))
  width = int((size[:, 1] - size[:, 0]).max())

  def allgather(arr):
    part = np.full((width,) + arr.shape[1:], np.nan, arr.dtype)
    part[:hi - lo] = arr[lo:hi]
    parts = np.asarray(multihost_utils.process_allgather(part))
    out = arr.copy()
    for (a, b), p in zip(size, parts):
      out[a:b] = p[:b - a]
    return out

  quality = allgather(quality)
  if feats is not None:
    feats = allgather(np.asarray(feats)) if not isinstance(feats, np.memmap) else feats
  blob = json.dumps({str(k): v for k, v in failures.items()}).encode()
  lens = np.asarray(multihost_utils.process_allgather(np.array([len(blob)])))
  buf = np.zeros(int(lens.max()), np.uint8)
  buf[:len(blob)] = np.frombuffer(blob, np.uint8)
  bufs = np.asarray(multihost_utils.process_allgather(buf))
  merged = {}
  for b, ln in zip(bufs, lens.reshape(-1)):
    merged.update({int(k): v for k, v in json.loads(bytes(b[:ln]).decode()).items()})
  return quality, feats, merged
