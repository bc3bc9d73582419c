"""Face image quality scores for a folder or list of aligned faces.

    python -m crfiqa_jax.score --checkpoint=PATH --input=DIR_OR_LIST --output=scores.csv

PATH: a training workdir, a directory written by `python -m crfiqa_jax.convert`, or a
released PyTorch .pth (with --arch, or detected from its block counts). Input: a folder
(searched recursively for images, sorted) or a text file with one image path per line.
Output: CSV `path,quality` with one row per input, in input order. Quality is the raw
regression output (higher = better). Images that are not image_size × image_size are
resized (bilinear) with a warning, or refused with --strict. Unreadable or refused images
are reported on stderr and written with an empty quality; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from crfiqa_jax.data.converters import IMAGE_EXTENSIONS
from crfiqa_jax.data.records import decode_image

log = logging.getLogger(__name__)


def list_inputs(spec: str | Path) -> list[str]:
  """Image paths of a folder (recursive, sorted) or of a list file (order kept)."""
  spec = Path(spec)
  if spec.is_dir():
    return sorted(str(p) for p in spec.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
  if spec.is_file():
    base = spec.parent
    lines = [ln.strip() for ln in spec.read_text().splitlines()]
    return [ln if Path(ln).is_absolute() else str(base / ln) for ln in lines
            if ln and not ln.startswith("#")]
  raise FileNotFoundError(f"--input {spec} is neither a folder nor a list file")


def load_image(path: str, size: int, strict: bool) -> tuple[np.ndarray | None, str | None]:
  """(uint8 [size, size, 3], None) or (None, reason)."""
  try:
    img = decode_image(Path(path).read_bytes())
  except Exception as e:
    return None, f"unreadable ({type(e).__name__}: {e})"
  if img.shape[:2] != (size, size):
    if strict:
      return None, f"is {img.shape[1]}x{img.shape[0]}, not {size}x{size} (--strict)"
    from PIL import Image
    img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    log.warning("%s is not %dx%d: resized (faces must be aligned for meaningful scores)",
                path, size, size)
  return img, None


class Scorer:
  """Jitted, batched quality (and embedding) prediction for one model.

  `scorer(images uint8 [N, H, W, 3])` → quality [N]; `scorer.embed(images, flip=True)` →
  (features [N, 2D] as the released evaluation, quality [N]).
  """

  def __init__(self, model, variables, *, batch_size: int = 64, image_size: int = 112):
    from crfiqa_jax import train
    self.variables = variables
    self.batch_size = batch_size
    self.image_size = image_size
    self._predict = train.predict_fn(model)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self.embed(images, flip=False)[1]

  def embed(self, images: np.ndarray, flip: bool = True):
    from crfiqa_jax import evaluate
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    return evaluate.extract(self._predict, self.variables, images, batch_size=self.batch_size,
                            flip=flip)

  @classmethod
  def from_checkpoint(cls, path, arch: str | None = None, **kw) -> "Scorer":
    from crfiqa_jax import convert
    model, variables, info = convert.load_model(path, arch)
    return cls(model, variables, image_size=info.get("image_size", 112), **kw)


def score_files(scorer: Scorer, paths: Sequence[str], *, strict: bool = False,
                progress: bool = True) -> tuple[np.ndarray, dict[int, str]]:
  """Quality per path (NaN where it failed) and {index: reason} of the failures."""
  quality = np.full(len(paths), np.nan)
  failures: dict[int, str] = {}
  bs = scorer.batch_size
  try:
    from tqdm import tqdm
    bar = tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr)
  except ImportError:
    bar = None
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    for start in range(0, len(paths), bs):
      idx = list(range(start, min(start + bs, len(paths))))
      loaded = list(pool.map(lambda i: load_image(paths[i], scorer.image_size, strict), idx))
      ok = [(i, img) for i, (img, err) in zip(idx, loaded) if img is not None]
      for i, (_, err) in zip(idx, loaded):
        if err is not None:
          failures[i] = err
      if ok:
        quality[[i for i, _ in ok]] = scorer(np.stack([img for _, img in ok]))
      if bar is not None:
        bar.update(len(idx))
  if bar is not None:
    bar.close()
  return quality, failures


def write_csv(path: str | Path, paths: Sequence[str], quality: np.ndarray):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "quality"])
    for p, q in zip(paths, quality):
      w.writerow([p, "" if np.isnan(q) else f"{q:.7g}"])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m crfiqa_jax.score",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--input", required=True, help="folder of images or list file")
  p.add_argument("--output", required=True, help="CSV to write")
  p.add_argument("--arch", default=None, help="architecture of a .pth checkpoint")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--strict", action="store_true", help="refuse images of the wrong size")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  try:
    paths = list_inputs(args.input)
    if not paths:
      raise ValueError(f"no images found in {args.input}")
    scorer = Scorer.from_checkpoint(args.checkpoint, args.arch, batch_size=args.batch_size)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  quality, failures = score_files(scorer, paths, strict=args.strict)
  write_csv(args.output, paths, quality)
  for i, why in sorted(failures.items()):
    print(f"failed: {paths[i]}: {why}", file=sys.stderr)
  print(f"scored {len(paths) - len(failures)}/{len(paths)} images → {args.output}",
        file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
