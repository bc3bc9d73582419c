"""The held-out report's statistics against scipy, and its data check."""

import numpy as np
import pytest
from scipy import stats

from crfiqa_jax.data import pairs
from crfiqa_jax.evaluation import heldout


def test_ranks_and_spearman_match_scipy():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 6, 40).astype(float)  # many ties
  y = x + rng.normal(0, 2, 40)
  np.testing.assert_allclose(heldout.rankdata(x), stats.rankdata(x))
  assert heldout.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_all_pairs_counts_and_labels():
  a, b, genuine = pairs.all_pairs(np.array([0, 0, 1, 1, 1]))
  assert len(a) == 10 and (a < b).all()
  assert genuine.sum() == 1 + 3  # one pair of identity 0, three of identity 1


def test_eval_data_without_a_test_split_names_the_key(tiny_records):
  with pytest.raises(ValueError, match=r"--config\.eval_data_dir=.*no split 'test'"):
    heldout.check_eval_data(tiny_records, "test")
