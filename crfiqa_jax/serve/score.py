"""Face image quality scores for a folder or list of aligned faces, written as they come.

    python -m crfiqa_jax.score --checkpoint=PATH --input=DIR_OR_LIST --output=scores.csv

PATH: a training workdir, a directory written by `python -m crfiqa_jax.convert`, a released
PyTorch .pth (with --arch, or detected from its block counts) or an exported .onnx file.
Input: a folder (searched recursively for images, sorted) or a text file with one image
path per line. Output: CSV `path,quality`, one row per input in input order, appended
batch by batch, so a killed run keeps what it scored; `--resume` continues it (no image
scored twice, the final file equal to an uninterrupted run's). Quality is the raw
regression output (higher = better). Images that are not image_size × image_size are
resized (bilinear) with a warning, or refused with --strict. Unreadable or refused images
get an empty quality and their reason on stderr; the exit code is then 1.

Raw photos (`--detect`, extra [detect]): each photo's face is detected (MTCNN), chosen
(`--face=center`, the default, or `largest`) and aligned to the ArcFace template before
scoring (crfiqa_jax.data.faces); `--all-faces` gives one row per face, named PHOTO#K with K
ranking the photo's faces by detection confidence; `--save-aligned=DIR` writes each crop
the model saw. A photo without a face gets an empty quality, "no face found" on stderr and
exit code 1. `--calibrated` adds a 0–100 column (crfiqa_jax.serve.calibration).

Several processes (`--coordinator/--num_processes/--process_id`, or `--distributed` on a
TPU pod): each scores a contiguous slice into OUTPUT.part-I-of-N; process 0 joins them.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from crfiqa_jax import cli
from crfiqa_jax.data import faces, sources
from crfiqa_jax.data.codecs import IMAGE_EXTENSIONS
from crfiqa_jax.serve import calibration, engines, inference

log = logging.getLogger(__name__)
HEADER = ["path", "quality"]


def _face_source(rows: faces.FaceRows) -> sources.ImageSource:
  """Photos' face rows as an image source: a NoFace becomes SkipImage (an empty quality and
  the reason on stderr)."""
  def load(i):
    try:
      return rows.load(i)
    except faces.NoFace as e:
      raise sources.SkipImage(str(e)) from None

  return sources.ImageSource(load, len(rows), rows.names.__getitem__)


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


def _format(q: float) -> str:
  return "" if not np.isfinite(q) else f"{q:.7g}"


def completed_rows(output: Path, names: Sequence[str]) -> int:
  """Rows of an interrupted `output` that can be kept: every complete line whose path is
  the expected input; a torn last line is cut off. Raises if the file belongs to other
  inputs."""
  if not output.exists():
    return 0
  data = output.read_bytes()
  keep = data[:data.rfind(b"\n") + 1]  # a line without its newline was torn by the kill
  rows = list(csv.reader(io.StringIO(keep.decode())))
  if not rows:
    output.write_bytes(b"")
    return 0
  if rows[0][:2] != HEADER:
    raise ValueError(f"{output} is not a scores CSV (header {rows[0]}); use a new --output")
  body = rows[1:]
  if len(body) > len(names):
    raise ValueError(f"{output} has {len(body)} rows but there are {len(names)} inputs: "
                     "not a run over these inputs; use a new --output")
  for i, row in enumerate(body):
    if row[0] != names[i]:
      raise ValueError(f"{output} row {i + 1} is {row[0]!r}, the input list has "
                       f"{names[i]!r} there: not a run over these inputs; use a new --output")
  if len(keep) != len(data):
    output.write_bytes(keep)
  return len(body)


def score_to_csv(predictor, names: Sequence[str], source: sources.ImageSource,
                 output: str | Path, *, positions: range | None = None,
                 batch_size: int = 64, resume: bool = False,
                 progress: bool | None = None, calibrate=None) -> dict[int, str]:
  """Scores `positions` (default all) of `source` into `output`, flushing every batch;
  returns {position: reason} of the images that failed in this run. With `calibrate` (a
  crfiqa_jax.serve.calibration.Calibration), a third column holds the 0–100 score."""
  output = Path(output)
  positions = range(len(names)) if positions is None else positions
  done = completed_rows(output, [names[i] for i in positions]) if resume else 0
  if done:
    log.info("resuming %s: %d of %d rows already scored", output, done, len(positions))
  failures: dict[int, str] = {}
  with open(output, "a" if done else "w", newline="") as f:
    w = csv.writer(f)
    if not done:
      w.writerow(HEADER + ["quality_0_100"] * (calibrate is not None))
    for b in inference.stream(predictor, source, positions=positions[done:],
                              batch_size=batch_size, progress=progress, desc="scoring"):
      q = dict(zip(b.indices.tolist(), b.quality.tolist()))
      for i in b.positions:
        w.writerow([names[i], _format(q.get(i, np.nan))] + (
            [_format(calibrate(q.get(i, np.nan)))] if calibrate is not None else []))
      failures.update(b.failures)
      f.flush()
  return failures


def _join_parts(output: Path, parts: list[Path]):
  with open(output, "wb") as out:  # bytes: the parts' \r\n line ends kept as csv wrote them
    for k, p in enumerate(parts):
      lines = p.read_bytes().splitlines(keepends=True)
      out.writelines(lines if k == 0 else lines[1:])
  for p in parts:
    p.unlink()


def run(args) -> int:
  paths = list_inputs(args.input)
  if not paths:
    raise ValueError(f"no images found in {args.input}")
  cal = calibration.load(args.checkpoint) if args.calibrated else None
  predictor = engines.load_predictor(args.checkpoint, args.arch, args.engine, args.precision)
  if args.detect:  # raw photos: one row per photo (or per face), aligned on the fly
    rows = faces.FaceRows(paths, rule=args.face, all_faces=args.all_faces,
                          size=predictor.image_size, save_dir=args.save_aligned,
                          root=Path(args.input) if Path(args.input).is_dir() else
                          Path(args.input).parent)
    paths, source = rows.names, _face_source(rows)
  elif args.save_aligned or args.all_faces:
    raise ValueError("--save-aligned and --all-faces need --detect (raw photos)")
  else:
    source = sources.files_source(paths, image_size=predictor.image_size, strict=args.strict)
  output = Path(args.output)
  n_proc = jax.process_count()
  if n_proc > 1:
    me = jax.process_index()
    part = output.with_name(f"{output.name}.part-{me:05d}-of-{n_proc:05d}")
    failures = score_to_csv(predictor, paths, source, part,
                            positions=inference.process_slice(len(paths)),
                            batch_size=args.batch_size, resume=args.resume, calibrate=cal)
    multihost_utils.sync_global_devices("crfiqa_jax.score parts written")
    if me == 0:
      _join_parts(output, [output.with_name(f"{output.name}.part-{k:05d}-of-{n_proc:05d}")
                           for k in range(n_proc)])
    multihost_utils.sync_global_devices("crfiqa_jax.score joined")
  else:
    failures = score_to_csv(predictor, paths, source, output, batch_size=args.batch_size,
                            resume=args.resume, calibrate=cal)
  for i, why in sorted(failures.items()):
    print(f"failed: {paths[i]}: {why}", file=sys.stderr)
  with open(output, newline="") as f:
    empty = sum(1 for row in csv.DictReader(f) if row["quality"] == "")
  if jax.process_index() == 0:
    print(f"scored {len(paths) - empty}/{len(paths)} images → {output}", file=sys.stderr)
  return 1 if empty else 0


def main(argv=None) -> int:
  p = cli.parser("crfiqa_jax.score", __doc__,
                 "python -m crfiqa_jax.score --checkpoint=runs/crfiqa_s --input=faces/ "
                 "--output=scores.csv")
  p.add_argument("--checkpoint", required=True,
                 help="training workdir, converted model dir, released .pth or .onnx")
  p.add_argument("--input", required=True, help="folder of images or list file")
  p.add_argument("--output", required=True, help="CSV to write")
  p.add_argument("--arch", default=None, help="architecture of a .pth checkpoint")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--strict", action="store_true", help="refuse images of the wrong size")
  engines.add_argument(p)
  p.add_argument("--detect", action="store_true",
                 help="inputs are raw photos: detect, choose and align a face ([detect] extra)")
  p.add_argument("--face", choices=("center", "largest"), default="center",
                 help="with --detect, which face of a photo with several")
  p.add_argument("--all-faces", action="store_true",
                 help="with --detect, one row per face, named PHOTO#K (K: by confidence)")
  p.add_argument("--save-aligned", default=None, metavar="DIR",
                 help="with --detect, write each aligned crop the model saw (PNG)")
  p.add_argument("--calibrated", action="store_true",
                 help="add a 0-100 column (the model's calibration.json; "
                      "python -m crfiqa_jax.calibration fits it)")
  p.add_argument("--resume", action="store_true",
                 help="continue an interrupted run into the same --output")
  cli.add_process_flags(p)
  args = p.parse_args(argv)
  cli.quiet_logging()
  cli.init_processes(args)
  return cli.run(lambda: run(args))
