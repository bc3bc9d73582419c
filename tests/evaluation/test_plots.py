"""The report's plots (real PNG files, one panel per FMR and mode) and evaluate's CSV tables
(cells checked by hand)."""

import numpy as np
from PIL import Image

from crfiqa_jax.evaluation import pair_report, plots

SIM = np.r_[[0.9, 0.2, 0.7, 0.1, 0.6], 0.65, 0.5, np.zeros(98)]
GEN = np.r_[np.ones(5, bool), np.zeros(100, bool)]


def _q(mated):
  return np.r_[np.asarray(mated, np.float64), np.linspace(-3, 9, 100)]


def test_plot_standard(tmp_path):
  methods = {"learned": _q([3, 1, 2, 1, 3]),
             "random": [_q([5, 4, 3, 2, 1]), _q([2, 1, 3, 4, 5])]}
  table, curves = pair_report.standard_table(SIM, GEN, methods, fmrs=("1e-2",))
  plots.plot_standard(table, curves, tmp_path / "edc.png", title="toy")
  assert (tmp_path / "edc.png").stat().st_size > 10_000
  plots.plot_standard({"fmr": {}}, {}, tmp_path / "none.png", title="toy")
  assert not (tmp_path / "none.png").exists()


def test_plot_released_has_a_panel_per_mode_and_fmr(tmp_path):
  table = pair_report.erc_table(SIM, GEN, {"learned": _q([3, 1, 2, 1, 3])},
                                fmrs=("1e-2",))
  plots.plot_released(table, tmp_path / "erc.png", title="toy")
  two = Image.open(tmp_path / "erc.png").size
  one = {"recomputed": table["recomputed"]}
  plots.plot_released(one, tmp_path / "one.png", title="toy")
  assert two[0] > 1.8 * Image.open(tmp_path / "one.png").size[0]  # two panels side by side
  plots.plot_released_single(table["fixed"]["1e-2"], tmp_path / "single.png", "toy")
  assert (tmp_path / "single.png").stat().st_size > 10_000


def test_tables_by_hand(tmp_path):
  results = {"lfw": {"arcface": {
      "erc": {"recomputed": {"1e-3": {"crfiqa": {"auc": 0.25}, "random": {"auc": 0.5}}}},
      "standard": {"limit": 0.2, "fmr": {"1e-3": {"crfiqa": {"pauc": 0.1,
                                                             "pauc_minus_best": 0.02}}}}}}}
  plots.write_auc_table(results, tmp_path / "auc.csv")
  assert (tmp_path / "auc.csv").read_text().splitlines() == [
      "method,lfw/arcface/recomputed/FMR=1e-3", "crfiqa,0.250000", "random,0.500000"]
  plots.write_pauc_table(results, tmp_path / "pauc.csv")
  assert (tmp_path / "pauc.csv").read_text().splitlines() == [
      "method,lfw/arcface/FMR=1e-3/pauc@0.2,lfw/arcface/FMR=1e-3/pauc@0.2-best",
      "crfiqa,0.100000,0.020000"]
