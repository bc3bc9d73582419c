import numpy as np
import pytest

from crfiqa_jax import reports

# 5 mated pairs, then 100 non-mated ones (one at 0.65, one at 0.5, the rest at 0).
SIM = np.r_[[0.9, 0.2, 0.7, 0.1, 0.6], 0.65, 0.5, np.zeros(98)]
GEN = np.r_[np.ones(5, bool), np.zeros(100, bool)]


def _q(mated):
  return np.r_[np.asarray(mated, np.float64), np.linspace(-3, 9, 100)]


def test_pair_quality():
  qa, qb = np.array([0.5, 2.0, -1.0]), np.array([1.0, 3.0, 4.0])
  np.testing.assert_array_equal(reports.pair_quality(qa, qb), [0.5, 2.0, -1.0])
  np.testing.assert_array_equal(reports.pair_quality(qa, qb, "product"), [0.5, 6.0, -4.0])
  with pytest.raises(ValueError, match="one of"):
    reports.pair_quality(qa, qb, "mean")


def test_random_pair_qualities_are_pair_minima():
  a, b = np.array([0, 0, 1]), np.array([1, 2, 2])
  runs = reports.random_pair_qualities(3, a, b, orderings=4, seed=1)
  assert len(runs) == 4 and len({tuple(r) for r in runs}) == 4
  for r in runs:
    # The lowest-quality image is in two of the three pairs: its value appears twice.
    assert np.sum(r == r.min()) == 2 and ((0 <= r) & (r < 1)).all()


def test_standard_table_hand_computed():
  # k = floor(1e-2·100) = 1 → threshold just above 0.5; mated errors 0.2 and 0.1.
  # learned qualities 3 1 2 1 3: (0, .4), (.4, 0), …; pAUC@0.5 = .4·.4 = .16, best .4²/2.
  # random 5 4 3 2 1 → sorted sims 0.6 0.1 0.7 0.2 0.9: y = .4, 2/4, 1/3, 1/2, 0 at
  # x = 0, .2, .4, .6, .8 → .08 + .1 + .1/3. random 2 1 3 4 5 → 0.2 0.9 0.7 0.1 0.6:
  # y = .4, 1/4, 1/3 → .08 + .05 + .1/3.
  methods = {"learned": _q([3, 1, 2, 1, 3]),
             "random": [_q([5, 4, 3, 2, 1]), _q([2, 1, 3, 4, 5])]}
  table, curves = reports.standard_table(SIM, GEN, methods, fmrs=("1e-2", "1e-3"), limit=0.5)
  assert list(table["fmr"]) == ["1e-2"] and "100 non-mated" in table["skipped"]["1e-3"]
  learned, rnd = table["fmr"]["1e-2"]["learned"], table["fmr"]["1e-2"]["random"]
  assert learned["threshold"] == np.nextafter(0.5, 1) and learned["starting_fnmr"] == 0.4
  assert learned["pauc"] == pytest.approx(0.16)
  assert learned["pauc_minus_best"] == pytest.approx(0.08)
  a, b = 0.18 + 0.1 / 3, 0.13 + 0.1 / 3
  assert rnd["pauc"] == pytest.approx((a + b) / 2) and rnd["pauc_sd"] == pytest.approx(0.025)
  assert len(curves["1e-2"]["random"]) == 2


def test_plot_standard(tmp_path):
  methods = {"learned": _q([3, 1, 2, 1, 3]),
             "random": [_q([5, 4, 3, 2, 1]), _q([2, 1, 3, 4, 5])]}
  table, curves = reports.standard_table(SIM, GEN, methods, fmrs=("1e-2",))
  reports.plot_standard(table, curves, tmp_path / "edc.png", title="toy")
  assert (tmp_path / "edc.png").stat().st_size > 10_000
  reports.plot_standard({"fmr": {}}, {}, tmp_path / "none.png", title="toy")
  assert not (tmp_path / "none.png").exists()
