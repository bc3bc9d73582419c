import numpy as np
import pytest

from crfiqa_jax.evaluation import erc
from released_erc import released_erc

# 4 genuine and 5 impostor pairs; see the comments for the hand computation.
SIM = np.array([0.9, 0.8, 0.3, 0.1, 0.5, 0.2, 0.0, -0.1, -0.3])
GEN = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
QUAL = np.array([9.0, 8.0, 7.0, 1.0, 2.0, 6.0, 5.0, 4.0, 3.0])  # lowest: gen 0.1, then imp 0.5


def test_recomputed_hand_computed():
  # r=0: impostor FMRs at candidate distances (largest first) 1, .8, .6, .4, .4, .2, .2, 0, 0.
  # Target 0.2 → first exact hit is the genuine-0.3 distance; genuine with d < d(0.3) are
  # 0.9 and 0.8 → FNMR 0.5.
  # r=0.25 → int(2.25)=2 pairs dropped (gen 0.1, imp 0.5); FMRs 1, .75, .5, .25, 0 ...; 0.25
  # is nearest 0.2 → threshold d(0.2); all three genuine are closer → FNMR 0.
  got = erc.error_versus_reject(SIM, GEN, QUAL, fmr=0.2, reject_ratios=[0.0, 0.25],
                                threshold="recomputed")
  np.testing.assert_allclose(got, [0.5, 0.0])


def test_fixed_hand_computed():
  # k = floor(0.2·5) = 1 → threshold = 2nd highest impostor similarity = 0.2; accept s > 0.2.
  # r=0: genuine 0.1 rejected → FNMR 1/4. r=0.25: the rejected genuine pair is discarded → 0.
  got = erc.error_versus_reject(SIM, GEN, QUAL, fmr=0.2, reject_ratios=[0.0, 0.25],
                                threshold="fixed")
  np.testing.assert_allclose(got, [0.25, 0.0])
  assert erc.fixed_threshold(SIM, GEN, 0.2) == 0.2


def test_fixed_ties_in_scores_and_quality():
  sim = np.array([0.5, 0.5, 0.9, 0.5, 0.5, 0.2, 0.1, 0.0])
  gen = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
  # k = floor(0.2·5) = 1, but the top two impostors tie at 0.5: accepting s > 0.5 admits 0
  # impostors (never more than k). Genuine pairs at 0.5 are then rejected.
  assert erc.fixed_threshold(sim, gen, 0.2) == 0.5
  qual = np.array([1.0, 1.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0])
  # r = 1/8: one pair to drop, but both genuine pairs share the lowest quality → both go.
  got = erc.error_versus_reject(sim, gen, qual, fmr=0.2, reject_ratios=[0.0, 0.125],
                                threshold="fixed")
  np.testing.assert_allclose(got, [2 / 3, 0.0])
  masks, frac = erc.discard_masks(qual, [0.0, 0.125])
  np.testing.assert_allclose(frac, [0.0, 0.25])


def test_recomputed_ties_in_scores_strict_acceptance():
  # A genuine pair exactly at the threshold distance is NOT accepted (strict "<").
  sim = np.array([0.5, 0.9, 0.5, 0.1, 0.0, -0.2])
  gen = np.array([1, 1, 0, 0, 0, 0], bool)
  got = erc.error_versus_reject(sim, gen, np.arange(6.0), fmr=0.25, reject_ratios=[0.0])
  # FMR at d(0.5) is 1/4 (the impostor at 0.5) → threshold d(0.5); genuine 0.5 not < it.
  np.testing.assert_allclose(got, [0.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recomputed_matches_released_algorithm_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = 3000
  gen = rng.random(n) < 0.3
  sim = np.where(gen, rng.normal(0.5, 0.2, n), rng.normal(0.0, 0.15, n))
  sim = np.round(np.clip(sim, -1, 1), 2)       # many tied scores
  qual = np.round(rng.normal(size=n) + gen, 1)  # many tied qualities
  fmrs = (1e-2, 1e-3, 1e-4)
  want = released_erc(sim, gen, qual, fmrs)
  got = erc.error_versus_reject(sim, gen, qual, fmr=fmrs)
  np.testing.assert_array_equal(got, want)


def test_auc_and_partial_auc():
  x = np.array([0.0, 0.5, 1.0])
  y = np.array([0.4, 0.2, 0.0])
  assert erc.erc_auc(x, y) == pytest.approx(0.5 * 0.3 + 0.5 * 0.1)
  assert erc.erc_auc(x, y, limit=0.25) == pytest.approx(0.25 * (0.4 + 0.3) / 2)


def test_bad_input():
  with pytest.raises(ValueError, match="length"):
    erc.error_versus_reject(SIM, GEN[:-1], QUAL)
  with pytest.raises(ValueError, match="non-finite"):
    erc.error_versus_reject(np.r_[SIM[:-1], np.nan], GEN, QUAL)
  with pytest.raises(ValueError, match="threshold"):
    erc.error_versus_reject(SIM, GEN, QUAL, threshold="median")
  with pytest.raises(ValueError, match="both genuine and impostor"):
    erc.error_versus_reject(SIM, np.ones(9, bool), QUAL)


@pytest.mark.parametrize("seed", [3, 4])
def test_recomputed_matches_released_algorithm_unique_scores(seed):
  # Unique scores and heavy quality ties, many pairs: exercises the windowed search.
  rng = np.random.default_rng(seed)
  n = 40000
  gen = rng.random(n) < 0.2
  sim = np.clip(np.where(gen, rng.normal(0.4, 0.25, n), rng.normal(0.0, 0.2, n)), -1, 1)
  qual = np.round(rng.normal(size=n) - 0.5 * gen, 1)
  fmrs = (1e-2, 1e-3, 1e-4)
  np.testing.assert_array_equal(erc.error_versus_reject(sim, gen, qual, fmr=fmrs),
                                released_erc(sim, gen, qual, fmrs))


def test_recomputed_window_fallback_on_plateaus():
  # All impostors tie: the operating point lies outside any small window.
  rng = np.random.default_rng(5)
  n = 6000
  gen = rng.random(n) < 0.5
  sim = np.where(gen, rng.uniform(0.3, 1.0, n), 0.2)
  qual = rng.normal(size=n)
  fmrs = (1e-2, 1e-3)
  np.testing.assert_array_equal(erc.error_versus_reject(sim, gen, qual, fmr=fmrs),
                                released_erc(sim, gen, qual, fmrs))


def test_recomputed_top_set_deepened_when_high_impostors_go_first():
  # The highest-scoring impostors have the lowest qualities, so discarding empties the top
  # of the score range and the operating points move deep: the top set must be deepened.
  rng = np.random.default_rng(6)
  n = 20000
  gen = rng.random(n) < 0.2
  sim = np.clip(np.where(gen, rng.normal(0.4, 0.25, n), rng.normal(0.0, 0.2, n)), -1, 1)
  qual = np.where(gen, rng.normal(size=n), -sim)
  fmrs = (1e-2, 1e-3)
  np.testing.assert_array_equal(erc.error_versus_reject(sim, gen, qual, fmr=fmrs),
                                released_erc(sim, gen, qual, fmrs))


def test_recomputed_matches_released_algorithm_on_random_small_sets():
  # Many small sets (most end up with every pair in the top set), coarse to no rounding of
  # the scores, ties in quality, FMRs up to 0.3, genuine shares 10-90 %: the operating point
  # lands on every kind of level (genuine-only runs above all impostors, plateaus, ties
  # between a genuine and an impostor score). Ratios that keep no impostor are NaN here
  # (the released script divides by zero there) and are left out of the comparison.
  compared = 0
  for seed in range(150):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(20, 400))
    gen = rng.random(n) < rng.uniform(0.1, 0.9)
    if gen.all() or not gen.any():
      continue
    sim = np.clip(np.where(gen, rng.normal(0.4, 0.3, n), rng.normal(0.0, 0.2, n)), -1, 1)
    if seed % 4:
      sim = np.round(sim, seed % 4)
    qual = np.round(rng.normal(size=n) + rng.uniform(-1, 1) * gen, seed % 3)
    fmrs = (0.3, 0.1, 1e-2, 1e-3)
    with np.errstate(invalid="ignore", divide="ignore"):
      try:
        want = released_erc(sim, gen, qual, fmrs)
      except ZeroDivisionError:  # a ratio kept no genuine pair: the released script fails
        continue
    got = erc.error_versus_reject(sim, gen, qual, fmr=fmrs)
    kept = ~np.isnan(got)
    np.testing.assert_array_equal(got[kept], want[kept], err_msg=f"seed {seed}")
    compared += 1
  assert compared > 100
