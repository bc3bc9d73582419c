"""Choosing a quality threshold: the one that discards a given fraction of a scored reference
set, and what it buys in FNMR at a fixed FMR (`python -m crfiqa_jax.evaluate --discard=F`).

  discard_threshold(quality, f)   the threshold t: keep an image when quality ≥ t; at most
                                  the fraction f of the reference images falls below it
  fnmr_before_after(...)          FNMR (and FMR) at an FR threshold set for a target FMR on
                                  all pairs, before and after discarding the pairs with an
                                  image below t
  from_scores(...), on_benchmark(...), format_results(...)   what `evaluate --discard` runs

The FR threshold stays where it was set on all pairs (the operational view, and the
standard EDC's: a deployed system sets it once); the FMR after discarding is reported
beside the FNMR, since it moves too.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from crfiqa_jax.evaluation.benchmarks import load_quality_csv
from crfiqa_jax.evaluation.erc import FMRS, fixed_threshold


@dataclasses.dataclass(frozen=True)
class Threshold:
  """Keep an image when its quality ≥ `threshold`: `discarded` of `images` fall below it
  (`fraction_discarded` ≤ the `fraction` asked for; ties at the threshold are kept)."""

  fraction: float
  threshold: float
  images: int
  discarded: int

  @property
  def fraction_discarded(self) -> float:
    return self.discarded / self.images if self.images else 0.0


def discard_threshold(quality, fraction: float) -> Threshold:
  """The threshold discarding the floor(fraction·N) lowest of the N finite qualities [N]
  (fewer when the next one ties with them); NaN qualities are not part of the set."""
  if not 0 <= fraction < 1:
    raise ValueError(f"--discard={fraction}: the fraction to discard must lie in [0, 1)")
  q = np.sort(np.asarray(quality, np.float64).reshape(-1))
  q = q[np.isfinite(q)]
  if not len(q):
    raise ValueError("no finite quality to choose a threshold from")
  k = int(math.floor(fraction * len(q) + 1e-9))
  t = float(q[k])
  return Threshold(fraction, t, len(q), int(np.sum(q < t)))


def fnmr_before_after(similarity, genuine, a, b, image_quality, threshold: float,
                      fmr: float) -> dict:
  """FNMR and FMR before and after discarding, at the FR threshold that accepts at most
  floor(fmr·#impostors) impostor pairs of all pairs (accept: similarity > it).

  similarity, genuine: [P] per pair; a, b: [P] image indices into image_quality [N].
  A pair is kept when both images have quality ≥ threshold.
  """
  sim = np.asarray(similarity, np.float64)
  gen = np.asarray(genuine, bool)
  q = np.asarray(image_quality, np.float64)
  if not gen.any() or gen.all():
    raise ValueError("FNMR at an FMR needs genuine and impostor pairs")
  t_fr = fixed_threshold(sim, gen, fmr)
  accept = sim > t_fr
  with np.errstate(invalid="ignore"):
    ok = q >= threshold
  kept = ok[np.asarray(a)] & ok[np.asarray(b)]

  def rates(mask):
    g, i = gen & mask, ~gen & mask
    return (float(np.mean(~accept[g])) if g.any() else float("nan"),
            float(np.mean(accept[i])) if i.any() else float("nan"))

  fnmr0, fmr0 = rates(np.ones_like(gen))
  fnmr1, fmr1 = rates(kept)
  return {"fmr_target": fmr, "fr_threshold": t_fr, "fnmr_before": fnmr0,
          "fnmr_after": fnmr1, "fmr_before": fmr0, "fmr_after": fmr1,
          "pairs": int(len(sim)), "pairs_kept": int(kept.sum()),
          "genuine_kept": int((gen & kept).sum()), "genuine": int(gen.sum())}


def from_scores(name: str, path: str | Path, fraction: float) -> dict:
  """The threshold of a scores CSV (`path,quality`, as `score` writes) on its own."""
  if not Path(path).is_file():
    raise FileNotFoundError(f"--quality {name}={path}: without --benchmark, --discard needs "
                            "a scores CSV (score's output) as the reference set")
  q = np.fromiter(load_quality_csv(path).values(), np.float64)
  return {"quality": name, "reference": str(path),
          **dataclasses.asdict(discard_threshold(q, fraction))}


def on_benchmark(bench, qualities: dict[str, np.ndarray], features: dict[str, np.ndarray],
                 fraction: float, fmrs, cosine) -> list[dict]:
  """Per quality source: the threshold on the benchmark's images, and per FR model and FMR
  the FNMR before and after discarding. qualities: name → [N]; features: FR name → [N, D]
  (NaN rows where missing); cosine(features, a, b) → [P]."""
  out = []
  for name, q in qualities.items():
    t = discard_threshold(q, fraction)
    row = {"quality": name, "reference": bench.name, **dataclasses.asdict(t), "fr": {}}
    for fr, feats in features.items():
      ok = np.isfinite(feats).all(1) & np.isfinite(q)
      keep = ok[bench.a] & ok[bench.b]
      a, b, gen = bench.a[keep], bench.b[keep], bench.genuine[keep]
      sim = cosine(feats, a, b)
      n_imp = int((~gen).sum())
      row["fr"][fr] = {f: fnmr_before_after(sim, gen, a, b, q, t.threshold, FMRS[f])
                       for f in fmrs if n_imp * FMRS[f] >= 1}
    out.append(row)
  return out


def format_results(rows: list[dict]) -> str:
  """The thresholds and FNMRs as text lines for stdout."""
  lines = []
  for r in rows:
    lines.append(f"{r['quality']} on {r['reference']}: discarding {r['fraction']:g} of "
                 f"{r['images']:,} images → keep quality ≥ {r['threshold']:.6g} "
                 f"({r['discarded']:,} discarded, "
                 f"{r['discarded'] / max(r['images'], 1):.2%})")
    for fr, by_fmr in r.get("fr", {}).items():
      if not by_fmr:
        lines.append(f"  FR {fr}: too few impostor pairs for the FMRs asked for")
      for f, m in by_fmr.items():
        lines.append(
            f"  FR {fr}, FMR {f}: FNMR {m['fnmr_before']:.4f} → {m['fnmr_after']:.4f} "
            f"(FMR {m['fmr_before']:.2g} → {m['fmr_after']:.2g}; pairs kept "
            f"{m['pairs_kept']:,}/{m['pairs']:,}, genuine {m['genuine_kept']:,}/"
            f"{m['genuine']:,})")
  return "\n".join(lines)
