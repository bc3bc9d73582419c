"""Sources users already have → FaceRecords datasets (see records.py).

  insightface  SRC/train.rec + train.idx + property   → "train" split, contiguous labels
  folder       SRC/<identity>/<image files>             → "train" split, labels by sorted name
               (with --detect: raw photos, each face detected and aligned first)
  bin          verification FILE.bin (pickle)           → "test" split + pairs in metadata

Nothing is dropped silently. Every converter counts what it read, wrote and skipped, and
why; the counts are printed at the end and stored in the dataset's metadata. Every image
is decoded once, with the decoder training uses (codecs.decode_checked). Per case:
  * undecodable image (bad JPEG header / unreadable file)   → skipped, counted
  * truncated JPEG ("Premature end of JPEG file")           → skipped, counted (undecodable)
  * JPEG with a recoverable error that libjpeg/PIL only     → kept byte for byte, counted;
    warn about (e.g. extraneous bytes before a marker)        read time decodes it leniently
                                                              and counts, never raises
  * photo without a detectable face (folder --detect)       → skipped, counted
  * wrong size (≠ image_size × image_size)                  → skipped, counted
  * not RGB (grayscale, CMYK, RGBA, palette)                → converted to RGB, counted
  * non-image file in an identity folder                    → skipped, counted
  * identity folder without any usable image               → skipped, counted (no label)
  * label out of range of `property`'s class count          → error naming the key
  * truncated .rec / .idx pointing past the end             → error naming file and offset
  * .bin pair referencing an undecodable image              → pair dropped, counted
  * .bin pickle holding anything but bytes/lists/bools      → error, nothing executed
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import logging
import pickle
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import simplejpeg
from PIL import Image

from crfiqa_jax.data import recordio
from crfiqa_jax.data.codecs import IMAGE_EXTENSIONS, decode_counted, encode_jpeg

log = logging.getLogger(__name__)


class Stats:
  """Counts per outcome ("read", "written", "skipped: <why>", "converted: <why>",
  "kept: <why>")."""

  def __init__(self):
    self.counts = collections.Counter()
    self.examples: dict[str, str] = {}
    self._lock = threading.Lock()  # images are checked in threads

  def add(self, what: str, where: str | None = None):
    with self._lock:
      self.counts[what] += 1
      if where is not None and what not in self.examples:
        self.examples[what] = where

  def report(self, name: str) -> str:
    lines = [f"{name}: read {self.counts['read']}, wrote {self.counts['written']}, "
             f"skipped {sum(v for k, v in self.counts.items() if k.startswith('skipped'))}"]
    for k, v in sorted(self.counts.items()):
      if k.startswith(("skipped", "converted", "kept")):
        lines.append(f"  {k}: {v}" + (f" (e.g. {self.examples[k]})" if k in self.examples else ""))
    return "\n".join(lines)

  def as_dict(self) -> dict:
    return dict(self.counts)


def check_image(data: bytes, image_size: int | None, where: str, stats: Stats) -> bytes | None:
  """Decodes `data` once, as training will. Returns the bytes to store (the original, or an
  RGB re-encoding), or None to skip; every outcome but a clean original is counted. An
  image that decodes with a recoverable warning is kept byte for byte: the read-time
  decoder gives the same pixels, counting the warning, and a re-encode would add a JPEG
  generation to the very thing quality is learnt from."""
  decoded = decode_counted(data, where, stats)
  if decoded is None:
    return None
  image, warning = decoded
  h, w = image.shape[:2]
  if image_size is not None and (h, w) != (image_size, image_size):
    stats.add(f"skipped: size is not {image_size}x{image_size}", f"{where} is {w}x{h}")
    return None
  if warning is not None:
    return data
  if simplejpeg.is_jpeg(data):
    space = simplejpeg.decode_jpeg_header(data)[2]
    if space == "YCbCr":
      return data
    stats.add("converted: not RGB", f"{where} JPEG colour space {space}")
    return encode_jpeg(image)
  with Image.open(io.BytesIO(data)) as im:
    mode = im.mode
  if mode == "RGB":
    return data
  stats.add("converted: not RGB", f"{where} mode {mode}")
  return _png(image)


def _png(rgb: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG")
  return buf.getvalue()


# ---------------------------------------------------------------------------------------
# insightface RecordIO.
# ---------------------------------------------------------------------------------------

def _read_property(src: Path) -> tuple[int | None, int | None]:
  prop = src / "property"
  if not prop.exists():
    return None, None
  parts = prop.read_text().strip().split(",")
  try:
    return int(parts[0]), int(parts[1])
  except (ValueError, IndexError):
    raise ValueError(f"{prop}: expected 'num_classes,height,width', got {prop.read_text()!r}")


def insightface_index(src: str | Path):
  """(reader, image keys, raw labels) of an insightface train.rec/idx."""
  src = Path(src)
  rec, idx = src / "train.rec", src / "train.idx"
  for p in (rec, idx):
    if not p.exists():
      raise FileNotFoundError(f"{p} not found (expected insightface train.rec/train.idx/property)")
  reader = recordio.RecordIOReader(rec, idx)
  header0, _ = recordio.unpack(reader[0]) if 0 in reader.index else (None, None)
  if header0 is not None and header0.flag > 0:
    keys = list(range(1, int(np.atleast_1d(header0.label)[0])))
  else:
    keys = reader.keys
  missing = [k for k in keys if k not in reader.index]
  if missing:
    raise recordio.RecordIOError(f"{idx}: record 0 announces images 1..{len(keys)} but "
                                 f"{len(missing)} keys are missing, e.g. {missing[:3]}")
  labels = np.empty(len(keys), np.int64)
  for i, k in enumerate(keys):
    header, _ = recordio.unpack(reader[k])
    lab = np.atleast_1d(header.label)[0]
    if lab != int(lab) or lab < 0:
      raise ValueError(f"{rec} key {k}: label {lab} is not a non-negative integer")
    labels[i] = int(lab)
  return reader, keys, labels


def insightface_splits(src: str | Path, *, image_size: int | None, stats: Stats):
  """(splits, num_classes, metadata) for records.write_records."""
  src = Path(src)
  num_classes_prop, _ = _read_property(src)
  reader, keys, raw = insightface_index(src)
  uniq = np.unique(raw)
  if num_classes_prop is not None and uniq.max() >= num_classes_prop:
    bad = keys[int(np.argmax(raw >= num_classes_prop))]
    raise ValueError(f"{src}/train.rec key {bad}: label {int(raw.max())} out of range for "
                     f"num_classes={num_classes_prop} in {src}/property")
  contiguous = len(uniq) == uniq.max() + 1
  mapping = {int(o): i for i, o in enumerate(uniq)}
  num_classes = len(uniq)
  meta = {"source": "insightface", "source_dir": str(src),
          "property_num_classes": num_classes_prop}
  if not contiguous:
    meta["label_map"] = {str(k): v for k, v in mapping.items()}
    log.warning("%s: %d distinct labels are not 0..%d: remapped to contiguous ids (mapping in "
                "the dataset metadata 'label_map')", src, num_classes, num_classes - 1)
  if num_classes_prop is not None and num_classes_prop != num_classes:
    log.warning("%s/property says %d classes, the records hold %d", src, num_classes_prop,
                num_classes)

  def check(k):
    stats.add("read")
    return check_image(recordio.unpack(reader[k])[1], image_size, f"key {k}", stats)

  def gen() -> Iterator[dict]:
    # The decoders release the GIL: decode-check a window of records in threads, in order.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
      for start in range(0, len(keys), 256):
        window = keys[start:start + 256]
        for k, lab, data in zip(window, raw[start:start + 256], pool.map(check, window)):
          if data is not None:
            stats.add("written")
            yield {"image": data, "label": mapping[int(lab)], "metadata": {"key": int(k)}}

  return {"train": gen}, num_classes, meta


# ---------------------------------------------------------------------------------------
# Image folders.
# ---------------------------------------------------------------------------------------

def folder_splits(src: str | Path, *, image_size: int | None, stats: Stats,
                  align=None):
  """With `align` (e.g. crfiqa_jax.data.faces.detect_and_align), every image is a raw photo that
  `align(data, size, where, stats)` turns into the JPEG of its aligned face, size
  image_size (112 if None), or None (counted there); the aligned JPEGs are kept in memory
  between the checking pass and the writing pass (~5 KB a face), not detected twice."""
  src = Path(src)
  if not src.is_dir():
    raise FileNotFoundError(f"{src} is not a directory of identity folders")
  identities = []
  for d in sorted(p for p in src.iterdir() if p.is_dir()):
    files = sorted(f for f in d.rglob("*") if f.is_file())
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    for f in files:
      if f.suffix.lower() not in IMAGE_EXTENSIONS:
        stats.add("skipped: not an image file", str(f))
    identities.append((d.name, images))
  if not identities:
    raise ValueError(f"{src} has no identity subfolders")
  # Decide labels only for identities with at least one usable image: check them first.
  usable = []
  for name, images in identities:
    ok = []
    for f in images:
      stats.add("read")
      if align is not None:
        data = align(f.read_bytes(), image_size or 112, str(f), stats)
      else:
        data = check_image(f.read_bytes(), image_size, str(f), stats)
      if data is not None:
        ok.append((f, data if align is not None else None))
    if ok:
      usable.append((name, ok))
    else:
      stats.add("skipped: identity folder without usable images", name)
  if not usable:
    raise ValueError(f"{src}: no usable images in any identity folder")
  names = [n for n, _ in usable]

  def gen():
    quiet = Stats()  # the first pass counted everything
    for label, (name, files) in enumerate(usable):
      for f, data in files:
        if data is None:
          data = check_image(f.read_bytes(), image_size, str(f), quiet)
        stats.add("written")
        yield {"image": data, "label": label,
               "metadata": {"path": str(f.relative_to(src))}}

  meta = {"source": "folder", "source_dir": str(src), "classes": names}
  return {"train": gen}, len(names), meta


# ---------------------------------------------------------------------------------------
# Verification .bin files.
# ---------------------------------------------------------------------------------------

class UnsafePickleError(pickle.UnpicklingError):
  pass


_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                  "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _BinUnpickler(pickle.Unpickler):
  """Admits bytes/str/lists/tuples/bools/ints and numpy arrays; refuses every other global."""

  def find_class(self, module, name):
    if (module, name) in _NUMPY_GLOBALS:
      return super().find_class(module, name)
    raise UnsafePickleError(f"refusing global {module}.{name} in a verification .bin file "
                            "(expected only image bytes and a list of booleans)")

  def persistent_load(self, pid):
    raise UnsafePickleError("persistent ids are not allowed in a verification .bin file")


def load_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
  """(encoded images, issame per pair) of an insightface verification .bin, loaded safely."""
  path = Path(path)
  with open(path, "rb") as f:
    try:
      obj = _BinUnpickler(f, encoding="bytes").load()
    except UnsafePickleError:
      raise
    except Exception as e:
      raise ValueError(f"{path} is not a readable verification .bin pickle: {e}") from e
  if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
    raise ValueError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
  bins, issame = obj
  bins = [bytes(b) if isinstance(b, (bytes, bytearray, np.ndarray)) else b for b in bins]
  if not all(isinstance(b, bytes) for b in bins):
    raise ValueError(f"{path}: image entries must be encoded bytes")
  issame = [bool(x) for x in np.asarray(issame).reshape(-1)]
  if len(bins) != 2 * len(issame):
    raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (need 2 per pair)")
  return bins, issame


def bin_splits(path: str | Path, *, image_size: int | None, stats: Stats):
  bins, issame = load_bin(path)
  stored, index = [], {}
  for i, b in enumerate(bins):
    stats.add("read")
    data = check_image(b, image_size, f"image {i}", stats)
    if data is not None:
      index[i] = len(stored)
      stored.append(data)
  pairs = []
  for p, same in enumerate(issame):
    a, b = 2 * p, 2 * p + 1
    if a in index and b in index:
      pairs.append([index[a], index[b], int(same)])
    else:
      stats.add("skipped: pair with an undecodable image", f"pair {p}")

  def gen():
    for i, data in enumerate(stored):
      stats.add("written")
      yield {"image": data, "label": -1, "metadata": {"index": i}}

  meta = {"source": "bin", "source_file": str(path), "test_pairs": pairs,
          "num_pairs": len(pairs), "num_genuine": int(sum(p[2] for p in pairs))}
  return {"test": gen}, 0, meta
