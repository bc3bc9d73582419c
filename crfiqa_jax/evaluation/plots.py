"""Plots of the pair report's tables (PNG, matplotlib's object API: no pyplot state, no
display needed) and the CSV tables of `evaluate`.

  plot_released(table, path)          one panel per (threshold mode, FMR): FNMR vs the ratio
                                      of unconsidered pairs, a line per quality method
  plot_standard(table, curves, path)  one panel per FMR: stepwise FNMR EDCs, the theoretical
                                      best, the random orderings' min–max band
  plot_released_single / plot_standard_single: one panel per file (evaluate's layout)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from crfiqa_jax.evaluation import erc

_STYLES = {"learned": ("tab:blue", "-"), "oracle": ("tab:green", "--"),
           "random": ("tab:gray", ":")}


def _figure(n_panels: int, width: float = 4.2):
  fig = Figure(figsize=(width * n_panels, 3.8))
  return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def _save(fig, path: Path, title: str | None = None):
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)


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


def plot_released(table: dict, path: Path, *, title: str, reject_ratios=None):
  """One panel per (mode, FMR) of a released `table`: FNMR vs ratio of unconsidered pairs."""
  ratios = erc.RELEASED_RATIOS if reject_ratios is None else np.asarray(reject_ratios)
  panels = [(m, f) for m in table for f in table[m]]
  fig, axes = _figure(len(panels))
  for ax, (mode, f) in zip(axes, panels):
    _panel(ax, table[mode][f], f"FMR={f}, threshold {mode}", ratios)
  _save(fig, path, title)


def plot_standard(table: dict, curves: dict, path: Path, *, title: str):
  """One panel per FMR of a standard table (skips the figure when every FMR was skipped)."""
  if not curves:
    return
  fig, axes = _figure(len(curves), 4.8)
  for ax, f in zip(axes, curves):
    _standard_panel(ax, table["fmr"][f], curves[f], f"FNMR-EDC, FMR={f} (fiqat convention)",
                    table["limit"])
  _save(fig, path, title)


def plot_released_single(results: dict, path: Path, title: str):
  fig, axes = _figure(1, 5.5)
  _panel(axes[0], results, title, erc.RELEASED_RATIOS)
  _save(fig, path)


def plot_standard_single(table: dict, curves: dict, path: Path, title: str,
                         limit: float):
  fig, axes = _figure(1, 5.5)
  _standard_panel(axes[0], table, curves, title, limit)
  _save(fig, path)


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
