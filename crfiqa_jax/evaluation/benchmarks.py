"""Readers for evaluation inputs: pair benchmarks, per-image quality and FR embeddings.

Benchmarks (`load_benchmark`):
  * a prepared dataset (`prepare bin` / `prepare synthetic` output): images and pairs from
    the records; image keys are the record's metadata "path" or its index as a string;
  * a folder with `pairs.txt` (XQLFW, Adience-style lists, the released ERC layout): lines
    "A B LABEL" (spaces, tabs or commas; LABEL 1 = genuine), A and B image paths relative to
    the folder or to its `images/` subfolder, the extension optional.

Quality sources (`load_quality_csv`): CSV with a `path,quality` header as `score` writes,
or the released "path quality" text lines. Keys are matched after making them relative to
the benchmark folder and dropping the extension, so absolute paths written by `score`
match. Bad files (wrong columns, NaN, duplicates) are a clear error.

Embedding sources (`load_embeddings`): an .npz (key → vector) or a folder of KEY.npy
files (the released layout), keys matched like quality keys.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np

from crfiqa_jax.data.codecs import IMAGE_EXTENSIONS
from crfiqa_jax.data.pairs import read_pairs
from crfiqa_jax.data.records import RecordSource
from crfiqa_jax.data.sources import ImageSource, files_source, records_source


@dataclasses.dataclass
class Benchmark:
  """Images (loaded lazily), canonical keys, pairs and optional per-image severity."""

  name: str
  keys: list[str]
  a: np.ndarray
  b: np.ndarray
  genuine: np.ndarray
  source: ImageSource               # the images, decoded on demand (crfiqa_jax.data.sources)
  severity: np.ndarray | None = None
  root: Path | None = None


def canonical(key: str, root: Path | None = None) -> str:
  """Relative to `root` (and its images/ folder) if inside it, without image extension."""
  p = Path(key)
  if root is not None and p.is_absolute():
    for base in (root / "images", root):
      try:
        p = p.relative_to(base)
        break
      except ValueError:
        continue
  s = p.as_posix()
  ext = Path(s).suffix
  return s[: -len(ext)] if ext.lower() in IMAGE_EXTENSIONS else s


def _find_image(root: Path, name: str) -> Path:
  """root/name or root/images/name, as given or with an image extension (either case)."""
  for base in (root, root / "images"):
    cand = base / name
    if cand.is_file():
      return cand
    for ext in IMAGE_EXTENSIONS:
      for e in (ext, ext.upper()):
        if (base / (name + e)).is_file():
          return base / (name + e)
  raise FileNotFoundError(f"{root}: image {name!r} of pairs.txt not found")


def _pairs_txt(root: Path, name: str) -> Benchmark:
  lines = [ln for ln in (root / "pairs.txt").read_text().splitlines() if ln.strip()
           and not ln.startswith("#")]
  keys: dict[str, int] = {}
  files: list[Path] = []
  a, b, g = [], [], []
  for n, ln in enumerate(lines, 1):
    parts = re.split(r"[\s,]+", ln.strip())
    if len(parts) != 3 or parts[2] not in ("0", "1"):
      raise ValueError(f"{root}/pairs.txt:{n}: expected 'A B 0|1', got {ln!r}")
    idx = []
    for p in parts[:2]:
      k = canonical(p)
      if k not in keys:
        keys[k] = len(files)
        files.append(_find_image(root, p))
      idx.append(keys[k])
    a.append(idx[0])
    b.append(idx[1])
    g.append(parts[2] == "1")

  return Benchmark(name, list(keys), np.array(a), np.array(b), np.array(g, bool),
                   files_source([str(f) for f in files]), root=root)


def _records(path: Path, name: str) -> Benchmark:
  a, b, genuine = read_pairs(path, "test")
  _, metas = RecordSource(path, "test").labels_and_metadata()  # no image decoded
  keys = [canonical(m["path"]) if "path" in m else str(i) for i, m in enumerate(metas)]
  severity = None
  if metas and all("severity" in m for m in metas):
    severity = np.array([m["severity"] for m in metas], np.float64)

  return Benchmark(name, keys, a, b, genuine, records_source(path, "test"), severity,
                   root=path)


def load_benchmark(spec: str) -> Benchmark:
  """'NAME=PATH' or 'PATH' (name = folder name) → Benchmark."""
  name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
  path = Path(path)
  name = name or path.name
  if (path / "pairs.txt").exists():
    return _pairs_txt(path, name)
  if path.exists():
    return _records(path, name)
  raise FileNotFoundError(f"benchmark {spec}: {path} has neither pairs.txt nor prepared records")


def load_quality_csv(path: str | Path, root: Path | None = None) -> dict[str, float]:
  """{canonical key: quality} from `path,quality` CSV or 'path quality' lines."""
  path = Path(path)
  text = path.read_text().splitlines()
  if not text:
    raise ValueError(f"{path} is empty")
  out: dict[str, float] = {}
  split = (lambda ln: next(csv.reader([ln]))) if "," in text[0] else \
      (lambda ln: re.split(r"\s+", ln.strip()))
  first = split(text[0])
  try:
    float(first[1])
    has_header = False
  except (ValueError, IndexError):
    has_header = True
  if has_header and [h.strip().lower() for h in first[:2]] != ["path", "quality"]:
    raise ValueError(f"{path}: expected a 'path,quality' header (or headerless 'path quality' "
                     f"lines), got {first}")
  start = 2 if has_header else 1
  rows = [split(ln) for ln in text[start - 1:] if ln.strip()]
  for n, row in enumerate(rows, start):
    if len(row) < 2:
      raise ValueError(f"{path}:{n}: expected 'path,quality', got {row}")
    if row[1].strip() == "":
      continue  # an image `score` could not read: no quality
    try:
      q = float(row[1])
    except ValueError:
      raise ValueError(f"{path}:{n}: quality {row[1]!r} is not a number") from None
    if not np.isfinite(q):
      raise ValueError(f"{path}:{n}: quality is {row[1]} (not finite)")
    key = canonical(row[0], root)
    if key in out:
      raise ValueError(f"{path}:{n}: duplicate path {row[0]!r}")
    out[key] = q
  return out


def load_embeddings(path: str | Path, root: Path | None = None) -> dict[str, np.ndarray]:
  """{canonical key: vector} from an .npz or a folder of KEY.npy files."""
  path = Path(path)
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as z:
      items = {canonical(k, root): np.asarray(z[k], np.float64).reshape(-1) for k in z.files}
  elif path.is_dir():
    items = {canonical(str(f.relative_to(path).with_suffix("")), root):
             np.load(f, allow_pickle=False).astype(np.float64).reshape(-1)
             for f in sorted(path.rglob("*.npy"))}
  else:
    raise FileNotFoundError(f"embeddings {path}: expected an .npz file or a folder of .npy")
  if not items:
    raise ValueError(f"embeddings {path} holds no vectors")
  dims = {v.shape[0] for v in items.values()}
  if len(dims) != 1:
    raise ValueError(f"embeddings {path} mix dimensions {sorted(dims)}")
  bad = [k for k, v in items.items() if not np.isfinite(v).all()]
  if bad:
    raise ValueError(f"embeddings {path}: {len(bad)} vectors have NaN/inf, e.g. {bad[0]!r}")
  return items
