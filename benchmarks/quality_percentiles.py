"""The range of the raw quality: percentiles of each model's output on held-out faces.

    python benchmarks/quality_percentiles.py NAME=CHECKPOINT=DATA_DIR [NAME=CHECKPOINT=DATA_DIR ...]
        [--split test] [--discard 0.01 0.05 0.10 0.20]

CHECKPOINT is any model path (a training workdir, an exported directory, a .pth, a released
model's name); DATA_DIR a prepared dataset whose split (default the held-out "test") is
scored at the model's input size, as the report after training scores it. Prints, per row,
the number of faces, the mean and standard deviation, and the 1st–99th percentiles side by
side, then the quality thresholds that discard each fraction (the same rule as `evaluate
--discard`, crfiqa_jax.evaluation.threshold). docs/quality-scores.md quotes its output.
"""

from __future__ import annotations

import argparse

import numpy as np

from crfiqa_jax.data import sources
from crfiqa_jax.evaluation.threshold import discard_threshold
from crfiqa_jax.serve import engines, inference

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def qualities(checkpoint: str, data_dir: str, split: str) -> np.ndarray:
  predictor = engines.load_predictor(checkpoint)
  _, q, failures = inference.extract(
      predictor, sources.records_source(data_dir, split, image_size=predictor.image_size),
      features="none", batch_size=128, desc=checkpoint)
  if failures:
    raise SystemExit(f"{len(failures)} images of {data_dir} could not be read")
  return q.astype(np.float64)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("rows", nargs="+", help="NAME=CHECKPOINT=DATA_DIR")
  p.add_argument("--split", default="test")
  p.add_argument("--discard", type=float, nargs="+", default=[0.01, 0.05, 0.10, 0.20])
  args = p.parse_args()
  results = {}
  for row in args.rows:
    name, ckpt, data_dir = row.split("=", 2)
    results[name] = qualities(ckpt, data_dir, args.split)
  head = "| model | faces | mean | sd | " + " | ".join(f"p{k}" for k in PERCENTILES) + " |"
  print(head)
  print("|" + "---|" * (4 + len(PERCENTILES)))
  for name, q in results.items():
    pct = np.percentile(q, PERCENTILES)
    print(f"| {name} | {len(q):,} | {q.mean():.4g} | {q.std():.4g} | "
          + " | ".join(f"{v:.4g}" for v in pct) + " |")
  print()
  print("| model | " + " | ".join(f"discard {f:g}" for f in args.discard) + " |")
  print("|" + "---|" * (1 + len(args.discard)))
  for name, q in results.items():
    cells = [discard_threshold(q, f) for f in args.discard]
    print(f"| {name} | " + " | ".join(f"≥ {t.threshold:.4g} ({t.discarded:,})" for t in cells)
          + " |")


if __name__ == "__main__":
  main()
