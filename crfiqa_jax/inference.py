"""Inference: one streaming, sharded path from images to embeddings and quality.

Everything after training runs through `stream` (score, evaluate, analyze, ijbc and the
demo's held-out report):

* a *source* gives random access to N images (files, a list, prepared ArrayRecord splits,
  aligned IJB-C crops, an in-memory array); `load(i)` decodes one image or raises
  `SkipImage(reason)`;
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
exported ONNX model serves through the same protocol (crfiqa_jax.onnx_predictor), and
crfiqa_jax.checkpoints.load_predictor picks one for any model path.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from crfiqa_jax import models, sharding
from crfiqa_jax.data.records import RecordSource, decode_image

log = logging.getLogger(__name__)


class SkipImage(Exception):
  """A source cannot give this image; the message says why (reported, never fatal)."""


# ---------------------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class ImageSource:
  """N images by index: `load(i)` → uint8 [H, W, 3] RGB, or raises SkipImage."""

  load: Callable[[int], np.ndarray]
  length: int
  name: Callable[[int], str] = str

  def __len__(self) -> int:
    return self.length


def _fit(img: np.ndarray, size: int | None, strict: bool, name: str) -> np.ndarray:
  if size is None or img.shape[:2] == (size, size):
    return img
  if strict:
    raise SkipImage(f"is {img.shape[1]}x{img.shape[0]}, not {size}x{size} (--strict)")
  from PIL import Image
  log.warning("%s is not %dx%d: resized (faces must be aligned for meaningful scores)",
              name, size, size)
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def files_source(paths: Sequence[str], *, image_size: int | None = None,
                 strict: bool = False) -> ImageSource:
  """Image files; wrong-sized images are resized with a warning (or refused if strict)."""

  def load(i):
    try:
      img = decode_image(Path(paths[i]).read_bytes())
    except Exception as e:  # unreadable file or undecodable bytes: reported per image
      raise SkipImage(f"unreadable ({type(e).__name__}: {e})") from None
    return _fit(img, image_size, strict, paths[i])

  return ImageSource(load, len(paths), lambda i: str(paths[i]))


def records_source(data_dir, split: str = "test", *, image_size: int | None = None
                   ) -> ImageSource:
  """The images of a prepared ArrayRecord split (`python -m crfiqa_jax.prepare`)."""
  src = RecordSource(data_dir, split)

  def load(i):
    try:
      img = decode_image(src[i]["image"])
    except Exception as e:
      raise SkipImage(f"record {i}: undecodable ({type(e).__name__}: {e})") from None
    return _fit(img, image_size, False, f"{data_dir}[{split}][{i}]")

  return ImageSource(load, len(src), lambda i: f"{data_dir}[{split}][{i}]")


def array_source(images: np.ndarray) -> ImageSource:
  """An in-memory uint8 [N, H, W, 3] array."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
  return ImageSource(lambda i: images[i], len(images))


# ---------------------------------------------------------------------------------------
# The Flax predictor.
# ---------------------------------------------------------------------------------------

def inference_variables(state) -> dict:
  """{"params", "batch_stats"} of a TrainState (or of a raw restored state dict)."""
  if isinstance(state, dict):
    return {"params": state["params"]["backbone"], "batch_stats": state["batch_stats"]}
  return {"params": state.params["backbone"], "batch_stats": state.batch_stats}


def host_local(tree):
  """numpy copies of (replicated) jax arrays, also when they span several processes."""
  import jax

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
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

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
    import jax
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
  import jax
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  bounds = np.linspace(0, n, count + 1).round().astype(int)
  return range(int(bounds[index]), int(bounds[index + 1]))


def _progress(total: int, desc: str, enabled: bool | None):
  import jax
  if enabled is None:
    enabled = jax.process_index() == 0 and total > 0
  from tqdm import tqdm
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

  def load(i):
    try:
      return source.load(i), None
    except SkipImage as e:
      return None, str(e)

  def decode(chunk):
    return list(pool.map(load, chunk))

  def dispatch(chunk, loaded):
    ok = [(i, img) for i, (img, _) in zip(chunk, loaded) if img is not None]
    fails = {i: why for i, (img, why) in zip(chunk, loaded) if img is None}
    if not ok:
      return chunk, [], fails, None
    imgs = np.stack([img for _, img in ok])
    shapes = {img.shape for _, img in ok}
    if len(shapes) > 1:
      raise ValueError(f"images of one batch differ in shape: {sorted(shapes)}")
    pad = batch_size - len(imgs)
    if pad:
      imgs = np.concatenate([imgs, np.zeros((pad,) + imgs.shape[1:], np.uint8)])
    out = predictor(imgs)
    if flip:
      out = (out, predictor(np.ascontiguousarray(imgs[:, :, ::-1])))
    return chunk, [i for i, _ in ok], fails, out

  def collect(item) -> Batch:
    chunk, idx, fails, out = item
    n = len(idx)
    emb = emb_f = None
    if out is None:
      q = np.zeros(0, np.float32)
    else:
      main, other = (out if flip else (out, None))
      emb, q = (np.asarray(v, np.float32)[:n] for v in main)
      if other is not None:
        emb_f = np.asarray(other[0], np.float32)[:n]
    if bar is not None:
      bar.update(len(chunk))
    return Batch(np.asarray(idx, np.int64), emb, emb_f, q, fails, chunk)

  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool, \
      concurrent.futures.ThreadPoolExecutor(max_workers=max(1, prefetch)) as outer:
    pending = collections.deque(outer.submit(decode, c) for c in chunks[:prefetch])
    nxt = len(pending)
    inflight = None
    try:
      for chunk in chunks:
        loaded = pending.popleft().result()
        if nxt < len(chunks):
          pending.append(outer.submit(decode, chunks[nxt]))
          nxt += 1
        item = dispatch(chunk, loaded)
        if inflight is not None:
          yield collect(inflight)
        inflight = item
      if inflight is not None:
        yield collect(inflight)
    finally:
      for f in pending:
        f.cancel()
      if bar is not None:
        bar.close()


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


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
  import jax
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
      feats[b.indices] = np.concatenate([l2_normalize(b.embedding),
                                         l2_normalize(b.embedding_flip)], 1)
    elif features == "sum":
      feats[b.indices] = b.embedding + b.embedding_flip
    elif features == "raw":
      feats[b.indices] = b.embedding
  if gather and jax.process_count() > 1:
    quality, feats, failures = _gather(quality, feats, failures, positions)
  return feats, quality, failures


def _gather(quality, feats, failures, positions):
  """Every process's slice → full arrays on every process (input order)."""
  import json

  from jax.experimental import multihost_utils
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
