"""The standard error-versus-discard characteristic (EDC), numpy only.

"standard" (`edc`, `edc_pauc`): the EDC as FIQA papers since 2023 and the ISO/IEC 29794-1
and 29794-5 work report it, following the conventions of fiqat's EDC module (Schlett et
al., "Considerations on the Evaluation of Biometric Quality Assessment Algorithms", IEEE
T-BIOM 6(1), 2024; fiqat 0.0.13, fiqat/edc.py):
  * one fixed threshold; a comparison is accepted when similarity ≥ threshold;
  * an FNMR EDC is computed on the mated pairs only, an FMR EDC on the non-mated pairs only;
    x = fraction of THAT population discarded, y = error rate among the rest of it;
  * a point at x = 0 and one at every distinct pair-quality level (all pairs tied at a level
    are discarded together), and the final point (1, 0);
  * pAUC = stepwise (left-continuous steps) area from 0 to the limit (0.2 usual); the
    "area under the theoretical best" curve max(0, e0 − x) is e0²/2 − max(0, e0 − limit)²/2.
  fiqat sets the threshold explicitly or by its quantile rule (`starting_error`:
  np.quantile of the population's similarities at e for FNMR, at 1 − e for FMR, numpy's
  default linear interpolation); `fmr=` adds the fixed-FMR threshold used above (the lowest
  threshold accepting at most floor(fmr·#non-mated) non-mated pairs).

The released-code ERC ("recomputed") and the fixed-threshold ERC on the released ratio
grid ("fixed") are in crfiqa_jax.evaluation.erc.
"""

from __future__ import annotations

import numpy as np

from crfiqa_jax.evaluation.erc import fixed_threshold, validate

ERRORS = ("fnmr", "fmr")


def fmr_threshold(similarity, genuine, fmr: float) -> float:
  """The lowest threshold t at which at most floor(fmr·#non-mated) non-mated pairs have
  similarity ≥ t: the float just above the (k+1)-th highest non-mated similarity (so
  "similarity ≥ t" accepts exactly what `fixed_threshold`'s "similarity > t" accepts)."""
  if not 0 < fmr < 1:
    raise ValueError(f"fmr must lie in (0, 1), got {fmr}")
  return float(np.nextafter(fixed_threshold(similarity, genuine, fmr), np.inf))


def edc(similarity, genuine, quality, *, error: str = "fnmr", threshold: float | None = None,
        fmr: float | None = None, starting_error: float | None = None):
  """Error-versus-discard characteristic in fiqat's convention (module docstring).

  Args:
    similarity: [N] comparison scores (higher = more similar); accepted when ≥ threshold.
    genuine: [N] bool, True for mated pairs.
    quality: [N] pair quality (e.g. `pair_report.pair_quality`); the lowest levels go first.
    error: "fnmr" (curve over the mated pairs) or "fmr" (over the non-mated pairs).
    threshold / fmr / starting_error: exactly one sets the threshold — given explicitly;
      `fmr_threshold` on the non-mated pairs; or fiqat's rule, the np.quantile of the
      curve's own population's similarities at starting_error (FNMR) or 1 − starting_error
      (FMR).
  Returns:
    (discard_fraction [L+1], error [L+1], threshold): with the population's M pairs sorted
    by quality and d_0 = 0 < d_1 < … < d_{L-1} the positions where a new quality level
    starts, discard_fraction = (d_i / M, …, 1) and error = (#errors among positions ≥ d_i /
    (M − d_i), …, 0); L = number of distinct quality levels.
  """
  similarity, genuine, quality = validate(similarity, genuine, quality, need_both=False)
  if error not in ERRORS:
    raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
  given = [k for k, v in (("threshold", threshold), ("fmr", fmr),
                          ("starting_error", starting_error)) if v is not None]
  if len(given) != 1:
    raise ValueError(f"give exactly one of threshold, fmr, starting_error (got {given or 'none'})")
  population = genuine if error == "fnmr" else ~genuine
  if not population.any():
    raise ValueError(f"no {'mated' if error == 'fnmr' else 'non-mated'} pairs for an "
                     f"{error.upper()} EDC")
  sim = similarity[population]
  if threshold is not None:
    t = float(threshold)
    if np.isnan(t):
      raise ValueError("threshold is NaN")
  elif fmr is not None:
    if genuine.all():
      raise ValueError("fmr= needs non-mated pairs to set the threshold")
    t = fmr_threshold(similarity, genuine, fmr)
  else:
    if not 0 <= starting_error <= 1:
      raise ValueError(f"starting_error must lie in [0, 1], got {starting_error}")
    t = float(np.quantile(sim, starting_error if error == "fnmr" else 1 - starting_error))
  wrong = sim < t if error == "fnmr" else sim >= t
  order = np.argsort(quality[population], kind="stable")
  q = quality[population][order]
  m = len(q)
  errors_from = np.cumsum(wrong[order][::-1])[::-1]  # errors at sorted positions ≥ i
  starts = np.r_[0, np.flatnonzero(q[1:] != q[:-1]) + 1]
  x = np.r_[starts / m, 1.0]
  y = np.r_[errors_from[starts] / (m - starts), 0.0]
  return x, y, t


def edc_pauc(discard_fraction, error, limit: float = 0.2, *, subtract_best: bool = False) -> float:
  """Stepwise partial area under an EDC from 0 to `limit` (fiqat's pAUC):
  Σ_i error_i · max(0, min(x_{i+1}, limit) − x_i), the last point extending to the limit.
  With `subtract_best`, minus the area under the theoretical best curve max(0, e0 − x):
  e0²/2 − max(0, e0 − limit)²/2, e0 = error[0]."""
  x = np.asarray(discard_fraction, np.float64)
  y = np.asarray(error, np.float64)
  if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
    raise ValueError(f"discard_fraction {x.shape} and error {y.shape} must be equal, "
                     "non-empty 1-D shapes")
  if not 0 <= limit <= 1:
    raise ValueError(f"limit must lie in [0, 1], got {limit}")
  if not np.isfinite(y).all() or (np.diff(x) < 0).any():
    raise ValueError("error must be finite and discard_fraction non-decreasing")
  right = np.minimum(np.r_[x[1:], np.inf], limit)
  area = float(np.sum(y * np.maximum(right - x, 0.0))) if limit > 0 else 0.0
  if subtract_best:
    e0 = y[0]
    area -= e0 ** 2 / 2 - max(0.0, e0 - limit) ** 2 / 2
  return area
