"""An optional bounded quality score: a strictly increasing map of the raw CR output to 0–100.

The raw quality (the regression head's output) is unbounded and its range depends on the
model. Users ask for a bounded score (OFIQ reports 0–100 through a sigmoid). The map is a
logistic fitted on a reference set's empirical quantiles:

  calibrated(q) = 100 / (1 + exp(−(q − m) / s)),   m = median,  s = (Q75 − Q25) / (2 ln 3)

so the reference set's quartiles map to exactly 25, 50 and 75. Being strictly increasing,
it keeps every ordering of images, hence of pairs (pair quality = min of the two), hence
every ERC and its AUC; it adds no information, only a scale. In float64, near 0 and 100
the output's resolution runs out: raw scores closer than ~1e-16·e^{|q−m|/s} scales may tie
(within ±10 s of the median, anything more than 1e-11 s apart stays apart); write the
calibrated column with enough digits if you rank by it.

Stored beside the model as JSON: DIR/calibration.json for a checkpoint folder,
FILE.pth.calibration.json for a .pth file. Fit from a scores CSV of a reference set:

    python -m crfiqa_jax.score --checkpoint=CKPT --input=reference_faces/ --output=ref.csv
    python -m crfiqa_jax.calibration --checkpoint=CKPT --reference=ref.csv
    python -m crfiqa_jax.score --checkpoint=CKPT --input=FACES --output=q.csv --calibrated
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from crfiqa_jax import cli
from crfiqa_jax.serve import model_io, registry

FILE_NAME = "calibration.json"


@dataclasses.dataclass(frozen=True)
class Calibration:
  median: float
  scale: float
  num_reference: int = 0
  reference: str = ""

  def __call__(self, quality) -> np.ndarray:
    """Raw quality (any shape) → calibrated score in (0, 100); NaN stays NaN."""
    z = (np.asarray(quality, np.float64) - self.median) / self.scale
    return 100.0 / (1.0 + np.exp(-z))

  def to_json(self) -> str:
    return json.dumps({"kind": "logistic", **dataclasses.asdict(self)}, indent=1)

  @classmethod
  def from_json(cls, text: str, where: str = "calibration") -> "Calibration":
    try:
      d = json.loads(text)
      if d.get("kind") != "logistic":
        raise ValueError(f"kind {d.get('kind')!r} is not 'logistic'")
      cal = cls(float(d["median"]), float(d["scale"]), int(d.get("num_reference", 0)),
                str(d.get("reference", "")))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{where}: not a calibration file ({e})") from None
    if not (math.isfinite(cal.median) and math.isfinite(cal.scale) and cal.scale > 0):
      raise ValueError(f"{where}: median and a positive scale must be finite numbers")
    return cal


def fit(reference_quality, reference: str = "") -> Calibration:
  """Logistic through the reference set's quartiles (see the module docstring)."""
  q = np.asarray(reference_quality, np.float64).reshape(-1)
  q = q[np.isfinite(q)]
  if len(q) < 4:
    raise ValueError(f"calibration needs at least 4 finite reference qualities, got {len(q)}")
  q25, q50, q75 = np.quantile(q, [0.25, 0.5, 0.75])
  if not q75 > q25:
    raise ValueError("the reference qualities' quartiles coincide: no scale to fit")
  return Calibration(float(q50), float((q75 - q25) / (2 * math.log(3))), len(q), reference)


def path_for(checkpoint: str | Path) -> Path:
  p = Path(checkpoint)
  return p / FILE_NAME if p.is_dir() else p.with_name(p.name + "." + FILE_NAME)


def load(checkpoint: str | Path) -> Calibration:
  """The calibration stored beside `checkpoint` (a released model's name: beside its
  converted directory)."""
  path = path_for(model_io.resolve(checkpoint))
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} not found: fit one with `python -m crfiqa_jax.calibration "
        f"--checkpoint={checkpoint} --reference=SCORES.csv`")
  return Calibration.from_json(path.read_text(), str(path))


def read_scores(path: str | Path) -> np.ndarray:
  """The `quality` column of a CSV written by `score` (empty cells skipped)."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "quality" not in rows[0]:
    raise ValueError(f"{path}: expected a CSV with a 'quality' column (as `score` writes)")
  return np.array([float(r["quality"]) for r in rows if r["quality"].strip()], np.float64)


def main(argv=None) -> int:
  """Exit code per crfiqa_jax.cli: 0 stored, 2 a usage or input error."""
  p = cli.parser("crfiqa_jax.calibration",
                 "Fits the 0–100 map of a model's quality and stores it beside the model.",
                 "python -m crfiqa_jax.calibration --checkpoint=CKPT --reference=ref.csv")
  p.add_argument("--checkpoint", required=True,
                 help=f"the model the scores came from: any model path, {registry.HELP}")
  p.add_argument("--reference", required=True, metavar="SCORES.csv",
                 help="scores CSV of a reference set")
  args = p.parse_args(argv)

  def body():
    checkpoint = model_io.resolve(args.checkpoint)
    if not checkpoint.exists():
      raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist")
    cal = fit(read_scores(args.reference), reference=str(args.reference))
    path_for(checkpoint).write_text(cal.to_json() + "\n")
    print(f"median {cal.median:.6g}, scale {cal.scale:.6g} from {cal.num_reference} faces "
          f"→ {path_for(checkpoint)}", file=sys.stderr)

  return cli.run(body)
