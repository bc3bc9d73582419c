"""ERC speed: crfiqa_jax.erc (recomputed mode) vs a straightforward port of the released
script's algorithm (tests/released_erc.py: per ratio a Python sort of (score, label)
tuples, np.unique, the ROC, and a Python loop over genuine distances).

    python benchmarks/erc.py [--pairs 10000000] [--baseline-ratios 20]

Both get the same synthetic pairs (30% genuine, float similarities as real embeddings give
— or rounded to 1e-4 with --round, so scores tie — and qualities with ties) and FMRs 1e-2, 1e-3, 1e-4 over the 20 released reject ratios.
The FNMRs must be identical; the script asserts it. The baseline is slow: with
--baseline-ratios K < 20 it runs the first K ratios and its time is scaled by 20/K
(printed as an extrapolation).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crfiqa_jax import erc  # noqa: E402
import released_erc  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--pairs", type=int, default=10_000_000)
  p.add_argument("--baseline-ratios", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--round", action="store_true", help="round similarities to 1e-4 (ties)")
  args = p.parse_args()
  rng = np.random.default_rng(args.seed)
  n = args.pairs
  gen = rng.random(n) < 0.3
  sim = np.clip(np.where(gen, rng.normal(0.55, 0.2, n), rng.normal(0.0, 0.12, n)), -1, 1)
  if args.round:
    sim = np.round(sim, 4)
  qual = np.round(rng.normal(size=n) + 0.8 * gen, 3)
  fmrs = (1e-2, 1e-3, 1e-4)

  t = time.perf_counter()
  ours = erc.error_versus_reject(sim, gen, qual, fmr=fmrs)
  t_ours = time.perf_counter() - t
  print(f"crfiqa_jax.erc  {n:,} pairs, 20 ratios × 3 FMRs: {t_ours:8.2f} s")

  k = args.baseline_ratios
  ratios = erc.RELEASED_RATIOS[:k]
  t = time.perf_counter()
  base = released_erc.released_erc(sim, gen, qual, fmrs, ratios=ratios)
  t_base = (time.perf_counter() - t) * 20 / k
  note = "" if k == 20 else f" (extrapolated from {k} ratios)"
  print(f"released algo   {n:,} pairs, 20 ratios × 3 FMRs: {t_base:8.2f} s{note}")
  np.testing.assert_array_equal(ours[:, :k], base)
  print(f"identical FNMRs on the {k} compared ratios; speed-up {t_base / t_ours:.0f}×")


if __name__ == "__main__":
  main()
