"""edc.edc / edc.edc_pauc: fiqat's EDC conventions, against hand-computed cases and a loop
reimplementation of the rules as fiqat documents them (written here, not copied)."""

import math

import numpy as np
import pytest

from crfiqa_jax.evaluation import edc
from crfiqa_jax.evaluation import erc

# 5 mated pairs, then 4 non-mated ones.
SIM = np.array([0.9, 0.2, 0.7, 0.1, 0.6, 0.55, 0.3, 0.4, 0.8])
GEN = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
QUAL = np.array([3.0, 1.0, 2.0, 1.0, 3.0, 0.0, 0.0, 5.0, 1.0])


def test_fnmr_hand_computed_with_quality_ties():
  # Mated at threshold 0.5: errors 0.2 and 0.1, both at quality 1 (one level, discarded
  # together). Levels 1 (2 pairs), 2 (1), 3 (2): x = 0, 2/5, 3/5, then (1, 0).
  x, y, t = edc.edc(SIM, GEN, QUAL, threshold=0.5)
  np.testing.assert_array_equal(x, [0, 0.4, 0.6, 1])
  np.testing.assert_array_equal(y, [0.4, 0, 0, 0])
  assert t == 0.5
  # Stepwise pAUC@0.2 = 0.4·0.2; best = 0.4²/2 − 0.2²/2 = 0.06.
  assert edc.edc_pauc(x, y, 0.2) == pytest.approx(0.08)
  assert edc.edc_pauc(x, y, 0.2, subtract_best=True) == pytest.approx(0.02)
  # limit 0.5 beyond e0: 0.4·0.4 + 0·0.1; best = 0.4²/2.
  assert edc.edc_pauc(x, y, 0.5, subtract_best=True) == pytest.approx(0.16 - 0.08)
  assert edc.edc_pauc(x, y, 0.0) == 0.0


def test_fmr_curve_over_non_mated_pairs():
  # Non-mated at 0.5: errors (similarity ≥ 0.5) 0.55 (q 0) and 0.8 (q 1). Levels 0 (2 pairs),
  # 1 (1), 5 (1): (0, 2/4), (2/4, 1/2), (3/4, 0), (1, 0).
  x, y, _ = edc.edc(SIM, GEN, QUAL, error="fmr", threshold=0.5)
  np.testing.assert_array_equal(x, [0, 0.5, 0.75, 1])
  np.testing.assert_array_equal(y, [0.5, 0.5, 0, 0])
  assert edc.edc_pauc(x, y, 0.6) == pytest.approx(0.5 * 0.5 + 0.5 * 0.1)


def test_threshold_from_fmr_and_acceptance_at_equality():
  # k = floor(0.25·4) = 1: the lowest t with at most one non-mated similarity ≥ t is the
  # float just above 0.55, so 0.6, 0.7, 0.9 are accepted and the FNMR curve is as above.
  x, y, t = edc.edc(SIM, GEN, QUAL, fmr=0.25)
  assert t == np.nextafter(0.55, 1) and t > 0.55
  np.testing.assert_array_equal(y, [0.4, 0, 0, 0])
  # A mated similarity equal to the threshold is accepted (≥).
  _, y, _ = edc.edc(SIM, GEN, QUAL, threshold=0.6)
  np.testing.assert_array_equal(y, [0.4, 0, 0, 0])
  _, y, _ = edc.edc(SIM, GEN, QUAL, threshold=np.nextafter(0.6, 1))
  np.testing.assert_array_equal(y, [0.6, 1 / 3, 0.5, 0])  # 0.6 (quality 3) now rejected


def test_starting_error_quantile_rule():
  # Mated similarities sorted 0.1 0.2 0.6 0.7 0.9; linear quantile at 0.3: position 1.2 →
  # 0.2 + 0.2·0.4 = 0.28. Errors below it: 0.1, 0.2.
  x, y, t = edc.edc(SIM, GEN, QUAL, starting_error=0.3)
  assert t == pytest.approx(0.28)
  assert y[0] == pytest.approx(0.4)
  # FMR: non-mated sorted 0.3 0.4 0.55 0.8; quantile at 1 − 0.25: position 2.25 → 0.6125;
  # only 0.8 is ≥ it.
  _, y, t = edc.edc(SIM, GEN, QUAL, error="fmr", starting_error=0.25)
  assert t == pytest.approx(0.6125) and y[0] == 0.25


def test_all_equal_qualities_and_last_level():
  # One level: (0, e0), (1, 0); pAUC = 0.2·e0.
  x, y, _ = edc.edc(SIM, GEN, np.ones(9), threshold=0.5)
  np.testing.assert_array_equal(x, [0, 1])
  np.testing.assert_array_equal(y, [0.4, 0])
  assert edc.edc_pauc(x, y) == pytest.approx(0.08)
  # Non-mated pairs of the highest qualities would leave no mated pair in an all-pairs
  # discard; here the last level holds one mated pair (0.6, rejected at 0.65): (4/5, 1),
  # then (1, 0). Errors among the kept: 0.2 0.1 0.6 of 5, of 4, 0.1 0.6 of 3, of 2, of 1.
  q = np.array([1, 2, 3, 4, 5, 9, 9, 9, 9.0])
  x, y, _ = edc.edc(SIM, GEN, q, threshold=0.65)
  np.testing.assert_array_equal(x, [0, 0.2, 0.4, 0.6, 0.8, 1])
  np.testing.assert_allclose(y, [3 / 5, 3 / 4, 2 / 3, 1, 1, 0])


def test_bad_input():
  with pytest.raises(ValueError, match="exactly one"):
    edc.edc(SIM, GEN, QUAL)
  with pytest.raises(ValueError, match="exactly one"):
    edc.edc(SIM, GEN, QUAL, threshold=0.1, fmr=1e-3)
  with pytest.raises(ValueError, match="no mated pairs"):
    edc.edc(SIM, np.zeros(9, bool), QUAL, threshold=0.1)
  with pytest.raises(ValueError, match="non-mated"):
    edc.edc(SIM, np.ones(9, bool), QUAL, fmr=1e-3)
  with pytest.raises(ValueError, match="error must be"):
    edc.edc(SIM, GEN, QUAL, error="eer", threshold=0.1)
  with pytest.raises(ValueError, match="limit"):
    edc.edc_pauc([0, 1], [0.1, 0], 1.5)


# --- an independent reimplementation of fiqat's rules, loop by loop -------------------------

def rules_edc(sim, gen, qual, error, t):
  pop = [(q, s) for s, g, q in zip(sim, gen, qual) if g == (error == "fnmr")]
  xs, ys = [], []
  for level in sorted({q for q, _ in pop}):
    kept = [s for q, s in pop if q >= level]  # lower levels discarded, ties together
    xs.append((len(pop) - len(kept)) / len(pop))
    ys.append(sum((s < t) if error == "fnmr" else (s >= t) for s in kept) / len(kept))
  return np.array(xs + [1.0]), np.array(ys + [0.0])


def rules_pauc(xs, ys, limit):
  area = 0.0
  for i in range(len(xs)):
    if i == len(xs) - 1 or xs[i + 1] >= limit:
      return area + ys[i] * (limit - xs[i])
    area += ys[i] * (xs[i + 1] - xs[i])


def rules_quantile(values, p):
  v = sorted(values)
  pos = p * (len(v) - 1)
  lo = math.floor(pos)
  return v[lo] + (pos - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_rules_reimplementation(seed):
  rng = np.random.default_rng(seed)
  n = 600
  gen = rng.random(n) < 0.3
  sim = np.round(np.where(gen, rng.normal(0.5, 0.2, n), rng.normal(0.0, 0.15, n)), 2)
  qual = np.round(rng.normal(size=n) + gen, 1)
  imp = sim[~gen]
  for error in ("fnmr", "fmr"):
    for kw in ({"threshold": 0.3}, {"fmr": 1e-2}, {"starting_error": 0.1}):
      x, y, t = edc.edc(sim, gen, qual, error=error, **kw)
      if "fmr" in kw:
        k = math.floor(kw["fmr"] * len(imp))
        assert (imp >= t).sum() <= k < (imp >= np.nextafter(t, -1)).sum()  # lowest such t
      if "starting_error" in kw:
        pop = sim[gen] if error == "fnmr" else imp
        p = kw["starting_error"] if error == "fnmr" else 1 - kw["starting_error"]
        assert t == pytest.approx(rules_quantile(pop, p), abs=1e-12)
      want_x, want_y = rules_edc(sim, gen, qual, error, t)
      np.testing.assert_array_equal(x, want_x)
      np.testing.assert_array_equal(y, want_y)
      for limit in (0.05, 0.2, 1.0):
        best = want_y[0] ** 2 / 2 - max(0, want_y[0] - limit) ** 2 / 2
        assert edc.edc_pauc(x, y, limit) == pytest.approx(rules_pauc(want_x, want_y, limit))
        assert edc.edc_pauc(x, y, limit, subtract_best=True) == pytest.approx(
            rules_pauc(want_x, want_y, limit) - best)


def test_fnmr_at_a_cut_equals_fixed_mode():
  # The old "fixed" mode and the standard EDC share the threshold and the tie rule, so at
  # the same quality cut the FNMRs agree; only the x axis differs.
  rng = np.random.default_rng(7)
  n = 2000
  gen = rng.random(n) < 0.3
  sim = np.where(gen, rng.normal(0.5, 0.2, n), rng.normal(0.0, 0.15, n))
  qual = np.round(rng.normal(size=n), 1)
  x, y, _ = edc.edc(sim, gen, qual, fmr=1e-2)
  ratios = [0.0, 0.1, 0.3, 0.5]
  fixed = erc.error_versus_reject(sim, gen, qual, fmr=1e-2, reject_ratios=ratios,
                                  threshold="fixed")
  q_sorted, q_gen = np.sort(qual), np.sort(qual[gen])
  for r, f in zip(ratios, fixed):
    cut = q_sorted[int(r * n) - 1] if r > 0 else -np.inf  # pairs ≤ cut are discarded
    gone = np.searchsorted(q_gen, cut, side="right") / gen.sum()
    assert f == pytest.approx(y[np.searchsorted(x, gone)])


def test_constant_shift_of_mated_qualities_leaves_standard_pauc():
  rng = np.random.default_rng(3)
  n = 20000
  gen = rng.random(n) < 0.2
  sim = np.where(gen, rng.normal(0.45, 0.2, n), rng.normal(0.0, 0.12, n))
  qual = rng.normal(size=n) + np.where(gen, 2 * sim, 0)  # informative for mated pairs
  shifted = np.where(gen, qual - 0.5, qual)
  pauc = [edc.edc_pauc(*edc.edc(sim, gen, q, fmr=1e-3)[:2]) for q in (qual, shifted)]
  assert pauc[0] > 0 and pauc[1] == pauc[0]
  # The all-pairs axis of the "fixed" mode moves with the shift (the point).
  ratios = np.arange(0, 0.25, 0.05)
  old = [erc.erc_auc(ratios, erc.error_versus_reject(sim, gen, q, fmr=1e-3,
                                                     reject_ratios=ratios, threshold="fixed"))
         for q in (qual, shifted)]
  assert abs(old[1] - old[0]) > 0.02 * old[0]  # measured: 0.0642 → 0.0624
