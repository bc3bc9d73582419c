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
`--report=PAGE.html` writes one HTML page of the run at the end (crfiqa_jax.serve.report).

Several processes (`--coordinator/--num_processes/--process_id`, or `--distributed` on a
TPU pod): each scores a contiguous slice into OUTPUT.part-I-of-N; process 0 joins them.

SIGTERM or SIGINT (a scheduler's preemption notice, Ctrl-C): the batch in hand is scored
and written, then the run stops with exit code 75 and every row written is complete;
`--resume` then finishes the run to the same bytes as an uninterrupted one. A full disk
stops it with exit code 2 and one line naming the file and the bytes needed; the file keeps
every complete row and no part of one (crfiqa_jax.faults).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from crfiqa_jax import cli, faults, sharding
from crfiqa_jax.data import faces, sources
from crfiqa_jax.data.codecs import IMAGE_EXTENSIONS
from crfiqa_jax.serve import calibration, engines, inference, registry, report

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
                 progress: bool | None = None, calibrate=None,
                 stop: faults.StopRequest | None = None) -> dict[int, str]:
  """Scores `positions` (default all) of `source` into `output`, writing every batch whole;
  returns {position: reason} of the images that failed in this run. With `calibrate` (a
  crfiqa_jax.serve.calibration.Calibration), a third column holds the 0–100 score.

  `stop` (default: the process's request, crfiqa_jax.faults.current()): once it is set the
  batch in hand is written and the rest left for --resume. A batch the disk refuses is cut
  off whole (faults.DiskFull), so the file always ends with a complete row."""
  output = Path(output)
  stop = faults.current() if stop is None else stop
  positions = range(len(names)) if positions is None else positions
  done = completed_rows(output, [names[i] for i in positions]) if resume else 0
  if done:
    log.info("resuming %s: %d of %d rows already scored", output, done, len(positions))
  failures: dict[int, str] = {}
  with open(output, "ab" if done else "wb") as f:
    if not done:
      faults.append(f, _csv_bytes([HEADER + ["quality_0_100"] * (calibrate is not None)]),
                    output)
    if stop:
      return failures
    with contextlib.closing(inference.stream(
        predictor, source, positions=positions[done:], batch_size=batch_size,
        progress=progress, desc="scoring")) as batches:
      for b in batches:
        q = dict(zip(b.indices.tolist(), b.quality.tolist()))
        rows = [[names[i], _format(q.get(i, np.nan))] + (
            [_format(calibrate(q.get(i, np.nan)))] if calibrate is not None else [])
            for i in b.positions]
        faults.append(f, _csv_bytes(rows), output)
        failures.update(b.failures)
        if stop:
          break
  return failures


def _csv_bytes(rows) -> bytes:
  """CSV rows as the csv module writes them (\r\n line ends), UTF-8."""
  text = io.StringIO()
  csv.writer(text).writerows(rows)
  return text.getvalue().encode()


def _rows_in(path: Path) -> int:
  with open(path, "rb") as f:
    return max(0, sum(1 for _ in f) - 1)


def _join_parts(output: Path, parts: list[Path]):
  """The parts, in order, into `output` (the header once); the parts are removed after.
  A full disk leaves the parts as they were, removes the unfinished `output` and raises
  DiskFull naming it and the bytes the whole file needs."""
  need = sum(p.stat().st_size for p in parts)
  faults.check_space(output, need)
  try:
    with open(output, "wb") as out:  # bytes: the parts' \r\n line ends kept as csv wrote them
      for k, p in enumerate(parts):
        lines = p.read_bytes().splitlines(keepends=True)
        faults.append(out, b"".join(lines if k == 0 else lines[1:]), output)
  except faults.DiskFull:
    output.unlink(missing_ok=True)
    raise faults.DiskFull(output, need) from None
  for p in parts:
    p.unlink()


def run(args) -> int:
  """The command: exit code 0, or 1 when some images failed; cli.Stopped after a stop
  request (every complete batch written, the rest left for --resume)."""
  with faults.stop_on_signal() as stop:
    return _score(args, stop)


def _score(args, stop: faults.StopRequest) -> int:
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
    stopped = sharding.any_process(bool(stop))
    error = None
    if me == 0 and not stopped:
      try:
        _join_parts(output, [output.with_name(f"{output.name}.part-{k:05d}-of-{n_proc:05d}")
                             for k in range(n_proc)])
      except OSError as e:  # raised after the barrier, so that no process waits on it
        error = e
    multihost_utils.sync_global_devices("crfiqa_jax.score joined")
    if sharding.any_process(error is not None):
      raise error or ValueError(f"process 0 could not write {output} (its error says why); "
                                "the parts are kept: rerun with --resume")
    mine = part
  else:
    failures = score_to_csv(predictor, paths, source, output, batch_size=args.batch_size,
                            resume=args.resume, calibrate=cal)
    stopped, mine = bool(stop), output
  if stopped:
    who = stop.name or "a stop request of another process"
    raise cli.Stopped(f"{who}: {mine} holds the first {_rows_in(mine):,} of its rows, each "
                      "complete; rerun the same command with --resume to finish")
  for i, why in sorted(failures.items()):
    print(f"failed: {paths[i]}: {why}", file=sys.stderr)
  with open(output, newline="") as f:
    empty = sum(1 for row in csv.DictReader(f) if row["quality"] == "")
  if jax.process_index() == 0:
    print(f"scored {len(paths) - empty}/{len(paths)} images → {output}", file=sys.stderr)
    if args.report:
      page = report.write_scores_page(
          args.report, output, command=args.command, model=str(args.checkpoint),
          engine=getattr(predictor, "engine", "onnxruntime"), detect=args.detect,
          face=args.face, image_size=predictor.image_size,
          failures={paths[i]: why for i, why in failures.items()})
      print(f"report → {page}", file=sys.stderr)
  return 1 if empty else 0


def main(argv=None) -> int:
  p = cli.parser("crfiqa_jax.score", __doc__,
                 "python -m crfiqa_jax.score --checkpoint=runs/crfiqa_s --input=faces/ "
                 "--output=scores.csv")
  p.add_argument("--checkpoint", required=True,
                 help="training workdir, converted model dir, released .pth or .onnx, "
                      + registry.HELP)
  p.add_argument("--input", required=True, help="folder of images or list file")
  p.add_argument("--output", required=True, help="CSV to write")
  p.add_argument("--arch", default=None, help="architecture of a .pth checkpoint")
  p.add_argument("--batch-size", type=int, default=64, help="images per forward")
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
  p.add_argument("--report", default=None, metavar="PAGE.html",
                 help="at the end, write one self-contained HTML page: histogram, lowest- "
                      "and highest-quality faces, failures (python -m crfiqa_jax.report)")
  cli.add_process_flags(p)
  argv = list(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  args.command = " ".join([cli.prog("crfiqa_jax.score"), *argv])
  cli.quiet_logging()
  cli.init_processes(args)
  return cli.run(lambda: run(args))
