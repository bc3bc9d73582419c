"""ERC / EDC tables, plots and CSVs for the evaluation reports (evaluate, analyze, the demo).

Two tables, each labelled with its convention (crfiqa_jax.erc's module docstring):
  "released" — the CR-FIQA paper's ERC: FNMR on the nominal reject-ratio grid 0, 0.05, …,
    0.95 over all pairs, threshold "recomputed" per ratio (and, if asked, "fixed"), and the
    trapezoidal AUC; quote it beside the CR-FIQA paper's tables.
  "standard" — fiqat's FNMR EDC: fixed threshold at a target FMR, x = fraction of mated
    pairs discarded at each distinct pair-quality level, stepwise pAUC up to 0.2, raw and
    minus the theoretical best; quote it beside post-2023 FIQA papers and ISO/IEC 29794 work.

Pair quality is `pair_quality(qa, qb, how)`: min (the default and fiqat's, discarding the
lower-quality image's pairs first) or product. A quality method named "random" may map to
a list of per-pair quality arrays (several random image orderings): its numbers are means,
and the standard plot draws their min–max band.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from crfiqa_jax import erc

log = logging.getLogger(__name__)

FMRS = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}
PAIR_QUALITY = ("min", "product")
STANDARD_FMRS = ("1e-3", "1e-4")
STANDARD_LIMIT = 0.2


def cosine(features: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[N] cosine similarity of the pairs (features[a[i]], features[b[i]])."""
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


def erc_table(similarity, genuine, pair_qualities: dict[str, np.ndarray], *,
              fmrs=("1e-2", "1e-3"), modes=erc.MODES, reject_ratios=None,
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
    t = erc.fmr_threshold(similarity, genuine, FMRS[f])  # once for every method
    for name, q in pair_qualities.items():
      runs = [erc.edc(similarity, genuine, r, threshold=t)
              for r in (q if isinstance(q, list) else [q])]
      pauc = [erc.edc_pauc(x, y, limit) for x, y, _ in runs]
      best = [erc.edc_pauc(x, y, limit, subtract_best=True) for x, y, _ in runs]
      res = {"pauc": float(np.mean(pauc)), "pauc_minus_best": float(np.mean(best)),
             "starting_fnmr": float(runs[0][1][0]), "threshold": float(runs[0][2])}
      if len(runs) > 1:
        res["pauc_sd"] = float(np.std(pauc))
      table["fmr"][f][name] = res
      curves[f][name] = [(x, y) for x, y, _ in runs]
  return table, curves


_STYLES = {"learned": ("tab:blue", "-"), "oracle": ("tab:green", "--"),
           "random": ("tab:gray", ":")}


def _figure(n_panels: int, width: float = 4.2):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.8), squeeze=False)
  return plt, fig, axes[0]


def _save(plt, fig, path: Path, title: str | None = None):
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _panel(ax, results: dict, title: str, ratios):
  """Released panel: FNMR on the nominal ratio grid, a line per quality method."""
  for name, res in results.items():
    colour, ls = _STYLES.get(name, (None, "-"))
    y = np.array([np.nan if v is None else v for v in res["fnmr"]])
    ax.plot(100 * ratios, y, ls, color=colour, label=f"{name} (AUC {res['auc']:.4f})")
  ax.set_title(title, fontsize=10)
  ax.set_xlabel("Ratio of unconsidered pairs [%]")
  ax.set_ylabel("FNMR")
  ax.set_xlim(0, 100 * ratios[-1])
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def _standard_panel(ax, table: dict, curves: dict, title: str, limit: float):
  """Standard panel: stepwise FNMR EDCs over the actual fraction of mated pairs discarded,
  the theoretical best max(0, e0 − x), and the random orderings' min–max band."""
  grid = np.linspace(0, 1, 1001)
  e0 = None
  for name, runs in curves.items():
    colour, ls = _STYLES.get(name, (None, "-"))
    res = table[name]
    label = f"{name} (pAUC {res['pauc']:.4f}; minus best {res['pauc_minus_best']:.4f})"
    e0 = runs[0][1][0]
    if len(runs) > 1:
      ys = np.array([y[np.searchsorted(x, grid, side="right") - 1] for x, y in runs])
      ax.fill_between(grid, ys.min(0), ys.max(0), step="post", color=colour or "tab:gray",
                      alpha=0.25, lw=0)
      ax.step(grid, ys.mean(0), ls, where="post", color=colour,
              label=f"{label}: mean of {len(runs)}, min–max band")
    else:
      ax.step(runs[0][0], runs[0][1], ls, where="post", color=colour, label=label)
  if e0 is not None:
    ax.plot([0, e0, 1], [e0, 0, 0], "-", color="black", lw=0.8, label="theoretical best")
  ax.axvline(limit, color="black", ls=":", lw=0.8)
  ax.set_title(title, fontsize=10)
  ax.set_xlabel("Fraction of mated pairs discarded")
  ax.set_ylabel("FNMR")
  ax.set_xlim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def plot_erc(table: dict, path: Path, *, title: str, reject_ratios=None):
  """One panel per (mode, FMR) of a released `table`: FNMR vs ratio of unconsidered pairs."""
  ratios = erc.RELEASED_RATIOS if reject_ratios is None else np.asarray(reject_ratios)
  panels = [(m, f) for m in table for f in table[m]]
  plt, fig, axes = _figure(len(panels))
  for ax, (mode, f) in zip(axes, panels):
    _panel(ax, table[mode][f], f"FMR={f}, threshold {mode}", ratios)
  _save(plt, fig, path, title)


def plot_standard(table: dict, curves: dict, path: Path, *, title: str):
  """One panel per FMR of a standard table (skips the figure when every FMR was skipped)."""
  if not curves:
    return
  plt, fig, axes = _figure(len(curves), 4.8)
  for ax, f in zip(axes, curves):
    _standard_panel(ax, table["fmr"][f], curves[f], f"FNMR-EDC, FMR={f} (fiqat convention)",
                    table["limit"])
  _save(plt, fig, path, title)


def plot_erc_single(results: dict, path: Path, title: str):
  plt, fig, axes = _figure(1, 5.5)
  _panel(axes[0], results, title, erc.RELEASED_RATIOS)
  _save(plt, fig, path)


def plot_edc_single(table: dict, curves: dict, path: Path, title: str, limit: float):
  plt, fig, axes = _figure(1, 5.5)
  _standard_panel(axes[0], table, curves, title, limit)
  _save(plt, fig, path)


def _write_table(cells: dict, path: Path):
  """CSV with a row per method and a column per key: cells = {(method, column): value}."""
  cols = list(dict.fromkeys(c for _, c in cells))
  methods = sorted({m for m, _ in cells})
  with open(path, "w") as fh:
    fh.write("method," + ",".join(cols) + "\n")
    for m in methods:
      fh.write(m + "," + ",".join(f"{cells[(m, c)]:.6f}" if (m, c) in cells else ""
                                  for c in cols) + "\n")


def write_auc_table(results: dict, path: Path):
  """Released AUCs. Rows: quality methods; columns: benchmark/FR/mode/FMR (paper Table 1)."""
  cells = {}
  for bench, by_fr in results.items():
    for fr, r in by_fr.items():
      for mode, by_f in r["erc"].items():
        for f, by_m in by_f.items():
          for m, v in by_m.items():
            cells[(m, f"{bench}/{fr}/{mode}/FMR={f}")] = v["auc"]
  _write_table(cells, path)


def write_pauc_table(results: dict, path: Path):
  """Standard pAUCs. Rows: quality methods; columns: benchmark/FR/FMR/{pauc,pauc-best}."""
  cells = {}
  for bench, by_fr in results.items():
    for fr, r in by_fr.items():
      lim = r["standard"]["limit"]
      for f, by_m in r["standard"]["fmr"].items():
        for m, v in by_m.items():
          cells[(m, f"{bench}/{fr}/FMR={f}/pauc@{lim}")] = v["pauc"]
          cells[(m, f"{bench}/{fr}/FMR={f}/pauc@{lim}-best")] = v["pauc_minus_best"]
  _write_table(cells, path)
