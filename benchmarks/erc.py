"""ERC speed: crfiqa_jax.evaluation.erc (recomputed mode) vs a straightforward port of the released
script's algorithm (tests/released_erc.py: per ratio a Python sort of (score, label)
tuples, np.unique, the ROC, and a Python loop over genuine distances).

    python benchmarks/erc.py [--pairs 10000000] [--baseline-ratios 20]

Both get the same synthetic pairs (30% genuine, float similarities as real embeddings give
— or rounded to 1e-4 with --round, so scores tie — and qualities with ties) and FMRs
1e-2, 1e-3, 1e-4 over the 20 released reject ratios.
The FNMRs must be identical; the script asserts it. The baseline is slow: with
--baseline-ratios K < 20 it runs the first K ratios and its time is scaled by 20/K
(printed as an extrapolation; an overestimate, as later ratios keep fewer pairs).
Times are given as wall clock and as CPU time of this process (all threads): on a shared
machine the CPU times are the steadier figure. crfiqa_jax.evaluation.erc runs three times (median
reported, the first call too); the baseline once. Also times `edc.edc` (fiqat's FNMR EDC at
FMR 1e-3) and its pAUC on the same pairs.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crfiqa_jax.evaluation import edc
from crfiqa_jax.evaluation import erc
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

  runs = [_timed(erc.error_versus_reject, sim, gen, qual, fmr=fmrs) for _ in range(3)]
  ours = runs[0][0]
  t_ours = tuple(np.median([t for _, t in runs], axis=0))
  print(f"crfiqa_jax.evaluation.erc  {n:,} pairs, 20 ratios × 3 FMRs: {_fmt(t_ours)} (median of 3; "
        f"first call {_fmt(runs[0][1]).strip()})")
  (x, y, _), t_edc = _timed(edc.edc, sim, gen, qual, fmr=1e-3)
  print(f"crfiqa_jax.evaluation.edc.edc (FNMR, FMR 1e-3, {len(x):,} points) + pAUC@0.2 "
        f"{edc.edc_pauc(x, y):.4f}: {_fmt(t_edc)}")

  k = args.baseline_ratios
  ratios = erc.RELEASED_RATIOS[:k]
  base, t_base = _timed(released_erc.released_erc, sim, gen, qual, fmrs, ratios=ratios)
  t_base = tuple(v * 20 / k for v in t_base)
  note = "" if k == 20 else f" (extrapolated from {k} ratios)"
  print(f"released algo   {n:,} pairs, 20 ratios × 3 FMRs: {_fmt(t_base)}{note}")
  np.testing.assert_array_equal(ours[:, :k], base)
  print(f"identical FNMRs on the {k} compared ratios; speed-up {t_base[0] / t_ours[0]:.0f}× "
        f"wall, {t_base[1] / t_ours[1]:.0f}× CPU")


def _timed(f, *args, **kwargs):
  w, c = time.perf_counter(), time.process_time()
  out = f(*args, **kwargs)
  return out, (time.perf_counter() - w, time.process_time() - c)


def _fmt(t):
  return f"{t[0]:8.2f} s wall, {t[1]:8.2f} s CPU"


if __name__ == "__main__":
  main()
