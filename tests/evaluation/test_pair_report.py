"""The one pair report: pair quality, the random baseline, both tables (hand-computed), and
the report every caller runs."""

import numpy as np
import pytest

from crfiqa_jax.evaluation import erc, pair_report

# 5 mated pairs, then 100 non-mated ones (one at 0.65, one at 0.5, the rest at 0).
SIM = np.r_[[0.9, 0.2, 0.7, 0.1, 0.6], 0.65, 0.5, np.zeros(98)]
GEN = np.r_[np.ones(5, bool), np.zeros(100, bool)]


def _q(mated):
  return np.r_[np.asarray(mated, np.float64), np.linspace(-3, 9, 100)]


def test_pair_quality():
  qa, qb = np.array([0.5, 2.0, -1.0]), np.array([1.0, 3.0, 4.0])
  np.testing.assert_array_equal(pair_report.pair_quality(qa, qb), [0.5, 2.0, -1.0])
  np.testing.assert_array_equal(pair_report.pair_quality(qa, qb, "product"), [0.5, 6.0, -4.0])
  with pytest.raises(ValueError, match="one of"):
    pair_report.pair_quality(qa, qb, "mean")


def test_random_pair_qualities_are_pair_minima():
  a, b = np.array([0, 0, 1]), np.array([1, 2, 2])
  runs = pair_report.random_pair_qualities(3, a, b, orderings=4, seed=1)
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
  table, curves = pair_report.standard_table(SIM, GEN, methods, fmrs=("1e-2", "1e-3"), limit=0.5)
  assert list(table["fmr"]) == ["1e-2"] and "100 non-mated" in table["skipped"]["1e-3"]
  learned, rnd = table["fmr"]["1e-2"]["learned"], table["fmr"]["1e-2"]["random"]
  assert learned["threshold"] == np.nextafter(0.5, 1) and learned["starting_fnmr"] == 0.4
  assert learned["pauc"] == pytest.approx(0.16)
  assert learned["pauc_minus_best"] == pytest.approx(0.08)
  a, b = 0.18 + 0.1 / 3, 0.13 + 0.1 / 3
  assert rnd["pauc"] == pytest.approx((a + b) / 2) and rnd["pauc_sd"] == pytest.approx(0.025)
  assert len(curves["1e-2"]["random"]) == 2


def test_cosine_pairs_by_hand_in_the_features_dtype():
  f = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]], np.float32)
  got = pair_report.cosine_pairs(f, np.array([0, 0, 1]), np.array([1, 2, 2]))
  np.testing.assert_allclose(got, [0.6, -0.8, 0.0], atol=1e-7)
  assert got.dtype == np.float32
  assert pair_report.cosine_pairs(f.astype(np.float64), [0], [1]).dtype == np.float64


def test_pair_report_is_both_tables_of_the_image_qualities():
  """pair_report = erc_table and standard_table over the pair minima of the image qualities,
  plus "random" (5 seeded orderings) unless asked not to."""
  rng = np.random.default_rng(0)
  n, labels = 60, np.repeat(np.arange(12), 5)
  a, b = np.triu_indices(n, k=1)
  genuine = labels[a] == labels[b]
  sim = np.where(genuine, 0.7, 0.1) + 0.2 * rng.standard_normal(len(a))
  q = rng.random(n)
  rep = pair_report.pair_report(sim, genuine, a, b, {"learned": q}, n_images=n,
                                fmrs=("1e-2",), modes=("recomputed",))
  pq = np.minimum(q[a], q[b])
  rnd = pair_report.random_pair_qualities(n, a, b, orderings=5, seed=0)
  want = pair_report.erc_table(sim, genuine, {"learned": pq, "random": rnd}, fmrs=("1e-2",),
                               modes=("recomputed",))
  assert rep.released == want
  std, _ = pair_report.standard_table(sim, genuine, {"learned": pq, "random": rnd})
  assert rep.standard["fmr"] == std["fmr"] and rep.standard["pair_quality"] == "min"
  assert list(rep.curves["1e-3"]) == ["learned", "random"]
  bare = pair_report.pair_report(sim, genuine, a, b, {"learned": q}, n_images=n,
                                 random_orderings=None, how="product")
  assert list(bare.released["recomputed"]["1e-2"]) == ["learned"]
  assert set(bare.released) == set(erc.MODES) and bare.standard["pair_quality"] == "product"
