"""The one pair report: quality methods × one FR model's comparison scores → both tables.

Every report of the package (the demo's held-out identities, held-out real faces, the
benchmarks of `evaluate`) runs `pair_report`: image qualities → pair qualities (min of the
two images by default), a random baseline, and two tables, each labelled with its
convention (crfiqa_jax.evaluation.erc and .edc):
  "released" — the CR-FIQA paper's ERC: FNMR on the nominal reject-ratio grid 0, 0.05, …,
    0.95 over all pairs, threshold "recomputed" per ratio (and, if asked, "fixed"), and the
    trapezoidal AUC; quote it beside the CR-FIQA paper's tables.
  "standard" — fiqat's FNMR EDC: fixed threshold at a target FMR, x = fraction of mated
    pairs discarded at each distinct pair-quality level, stepwise pAUC up to 0.2, raw and
    minus the theoretical best; quote it beside post-2023 FIQA papers and ISO/IEC 29794 work.
Plots are crfiqa_jax.evaluation.plots.

Pair quality is `pair_quality(qa, qb, how)`: min (the default and fiqat's, discarding the
lower-quality image's pairs first) or product. The method "random" maps to a list of
per-pair quality arrays (several random image orderings): its numbers are means, and the
standard plot draws their min–max band.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from crfiqa_jax.evaluation import edc, erc
from crfiqa_jax.evaluation.erc import FMRS

log = logging.getLogger(__name__)

PAIR_QUALITY = ("min", "product")
RELEASED_FMRS = ("1e-2", "1e-3")  # the released table's FMRs unless a report asks for others
STANDARD_FMRS = ("1e-3", "1e-4")
STANDARD_LIMIT = 0.2


def cosine_pairs(features: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[P] cosine similarity of the pairs (features[a[i]], features[b[i]]), in the features'
  dtype."""
  fa, fb = features[a], features[b]
  num = np.einsum("ij,ij->i", fa, fb)
  return num / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))


def pair_quality(qa, qb, how: str = "min") -> np.ndarray:
  """[N] pair quality from the two images' [N] qualities: min(qa, qb) or qa·qb (product only
  orders pairs sensibly for non-negative scores, e.g. OFIQ's 0–100 scale)."""
  if how == "min":
    return np.minimum(qa, qb)
  if how == "product":
    return np.multiply(qa, qb)
  raise ValueError(f"pair quality must be one of {PAIR_QUALITY}, got {how!r}")


def random_pair_qualities(n_images: int, a, b, *, orderings: int = 5, seed: int = 0,
                          how: str = "min"):
  """Per-pair qualities of `orderings` random image orderings (uniform image qualities)."""
  rng = np.random.default_rng(seed)
  return [pair_quality(r[a], r[b], how) for r in (rng.random(n_images)
                                                   for _ in range(orderings))]


@dataclasses.dataclass
class PairReport:
  """Both tables of one FR model's pairs: `released` (erc_table's), `standard`
  (standard_table's) and the standard EDC `curves` for plots."""

  released: dict
  standard: dict
  curves: dict


def pair_report(similarity, genuine, a, b, image_qualities: dict[str, np.ndarray], *,
                n_images: int, random_orderings: int | None = 5, seed: int = 0,
                how: str = "min", fmrs=RELEASED_FMRS, modes=erc.MODES,
                discard_limit: float | None = None, standard_fmrs=STANDARD_FMRS,
                context: str = "") -> PairReport:
  """Both tables for pairs (a [P], b [P]) with comparison scores `similarity` [P] and
  `genuine` [P], for every image quality [n_images] in `image_qualities` (higher = better)
  and, unless random_orderings is None, "random": that many uniform random image orderings
  drawn with `seed`. Pair quality combines the two images' qualities `how` (`pair_quality`).
  `context` prefixes logged warnings (e.g. "lfw/arcface: ")."""
  methods = {k: pair_quality(q[a], q[b], how) for k, q in image_qualities.items()}
  if random_orderings:
    methods["random"] = random_pair_qualities(n_images, a, b, orderings=random_orderings,
                                              seed=seed, how=how)
  released = erc_table(similarity, genuine, methods, fmrs=fmrs, modes=modes,
                       discard_limit=discard_limit)
  standard, curves = standard_table(similarity, genuine, methods, fmrs=standard_fmrs,
                                    context=context)
  standard["pair_quality"] = how
  return PairReport(released, standard, curves)


def erc_table(similarity, genuine, pair_qualities: dict[str, np.ndarray], *,
              fmrs=RELEASED_FMRS, modes=erc.MODES, reject_ratios=None,
              discard_limit: float | None = None) -> dict:
  """The released table: {mode: {fmr: {method: {"fnmr": [...], "auc": float[, "pauc"]}}}}.

  "random" methods (lists of per-pair quality arrays) give the means over their orderings.
  """
  ratios = erc.RELEASED_RATIOS if reject_ratios is None else np.asarray(reject_ratios)
  out = {}
  for mode in modes:
    out[mode] = {}
    for f in fmrs:
      out[mode][f] = {}
      for name, q in pair_qualities.items():
        runs = q if isinstance(q, list) else [q]
        fnmrs = np.array([erc.error_versus_reject(similarity, genuine, r, fmr=FMRS[f],
                                                  reject_ratios=ratios, threshold=mode)
                          for r in runs])
        # Ratios that leave no genuine (or impostor) pair have no FNMR: the AUC then covers
        # the defined prefix only, and says up to where.
        nan = np.isnan(fnmrs).any(0)
        m = int(np.argmax(nan)) if nan.any() else len(ratios)
        res = {"fnmr": [None if np.isnan(v) else float(v) for v in fnmrs.mean(0)],
               "auc": float(np.mean([erc.erc_auc(ratios[:m], x[:m]) for x in fnmrs]))
               if m > 1 else float("nan")}
        if m < len(ratios):
          res["auc_up_to_ratio"] = float(ratios[m - 1]) if m else 0.0
          log.warning("%s FMR=%s %s: no FNMR beyond reject ratio %.2f (too few pairs left)",
                      mode, f, name, ratios[max(m - 1, 0)])
        if discard_limit is not None:
          lim = min(discard_limit, ratios[m - 1]) if m else 0.0
          res["pauc"] = float(np.mean([erc.erc_auc(ratios[:m], x[:m], limit=lim)
                                       for x in fnmrs]))
        out[mode][f][name] = res
  return out


def standard_table(similarity, genuine, pair_qualities: dict, *, fmrs=STANDARD_FMRS,
                   limit: float = STANDARD_LIMIT, context: str = ""):
  """The standard table: fiqat-convention FNMR EDCs at fixed-FMR thresholds.

  Returns (table, curves): table = {"limit", "skipped": {fmr: reason}, "fmr": {fmr:
  {method: {"pauc", "pauc_minus_best", "starting_fnmr", "threshold"[, "pauc_sd"]}}}};
  curves = {fmr: {method: [(discard_fraction, fnmr), ...]}} (one per ordering) for plots.
  An FMR is skipped, with a logged reason, when floor(fmr·#non-mated) < 1.
  """
  genuine = np.asarray(genuine, bool)
  n_imp = int((~genuine).sum())
  table = {"limit": limit, "skipped": {}, "fmr": {}}
  curves = {}
  for f in fmrs:
    if int(np.floor(FMRS[f] * n_imp)) < 1:
      table["skipped"][f] = f"{n_imp} non-mated pairs: floor(FMR·n) = 0"
      log.warning("%sstandard EDC at FMR=%s skipped: %s", context, f, table["skipped"][f])
      continue
    table["fmr"][f], curves[f] = {}, {}
    t = edc.fmr_threshold(similarity, genuine, FMRS[f])  # once for every method
    for name, q in pair_qualities.items():
      runs = [edc.edc(similarity, genuine, r, threshold=t)
              for r in (q if isinstance(q, list) else [q])]
      pauc = [edc.edc_pauc(x, y, limit) for x, y, _ in runs]
      best = [edc.edc_pauc(x, y, limit, subtract_best=True) for x, y, _ in runs]
      res = {"pauc": float(np.mean(pauc)), "pauc_minus_best": float(np.mean(best)),
             "starting_fnmr": float(runs[0][1][0]), "threshold": float(runs[0][2])}
      if len(runs) > 1:
        res["pauc_sd"] = float(np.std(pauc))
      table["fmr"][f][name] = res
      curves[f][name] = [(x, y) for x, y, _ in runs]
  return table, curves
