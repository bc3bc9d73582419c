import json

import numpy as np
import pytest

from crfiqa_jax.evaluation import analyze
from crfiqa_jax.train import config as config_lib
from crfiqa_jax.train.trainer import train
from helpers import TINY


def test_sample_stats_hand_computed():
  emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
  centres = np.array([[1.0, 0.0, -1.0, 5.0], [0.0, 1.0, 1.0, 5.0]])  # last column: padding
  labels = np.array([0, 1, 2])
  ccs, nnccs, cr = analyze.sample_stats(emb, labels, centres, num_classes=3)
  s = 2 ** -0.5
  np.testing.assert_allclose(ccs, [1.0, 1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(nnccs, [0.0, s, s], atol=1e-6)  # padding column never counts
  np.testing.assert_allclose(cr, ccs / (nnccs + 1 + 1e-9), atol=1e-6)


def test_sample_pairs():
  labels = np.repeat(np.arange(20), 5)
  a, b, gen = analyze.sample_pairs(labels, 50)
  assert gen.sum() == 50 and (~gen).sum() == 50
  assert np.all((labels[a] == labels[b]) == gen) and np.all(a < b)
  assert len(set(zip(a, b))) == 100


def test_cli_on_a_trained_workdir(tiny_records, tmp_path):
  cfg = config_lib.load_config("base", dict(TINY, data_dir=str(tiny_records), total_steps="2"))
  train(cfg, tmp_path / "wd")
  rc = analyze.main([f"--checkpoint={tmp_path / 'wd'}", f"--data={tiny_records}",
                     "--pairs=300"])
  assert rc == 0
  out = tmp_path / "wd" / "analysis"
  r = json.loads((out / "analysis.json").read_text())
  assert r["num_samples"] == 160 and r["genuine_pairs"] > 0
  assert set(r["erc_auc"]["recomputed"]["1e-2"]) == {"CR", "CCS", "-NNCCS"}
  assert len((out / "samples.csv").read_text().splitlines()) == 161
  assert (out / "distributions.png").stat().st_size > 5000
  assert analyze.main([f"--checkpoint={tmp_path}", f"--data={tiny_records}"]) == 2
  # The same workdir serves scoring: the backbone of its latest checkpoint.
  from crfiqa_jax.serve import scorer
  s = scorer.Scorer.from_checkpoint(tmp_path / "wd", batch_size=4)
  assert s.image_size == 32
  q = s(np.zeros((3, 32, 32, 3), np.uint8))
  assert q.shape == (3,) and np.isfinite(q).all()


def test_sample_pairs_is_uniform_over_all_impostor_pairs():
  labels = np.repeat(np.arange(50), 4)  # 200 images
  a, b, gen = analyze.sample_pairs(labels, 2000, seed=0)
  imp_a, imp_b = a[~gen], b[~gen]
  assert len(set(zip(imp_a, imp_b))) == 2000 and np.all(imp_a < imp_b)
  assert np.all(labels[imp_a] != labels[imp_b]) and np.all(labels[a[gen]] == labels[b[gen]])
  # Uniform pairs of 200 images: the larger index is spread over the whole set (the old
  # "smallest indices first" selection kept max(b) near the start), and every image appears
  # about equally often.
  seen = np.bincount(np.r_[imp_a, imp_b], minlength=200)
  assert imp_b.max() > 190 and np.median(imp_b) > 100
  assert seen[:100].sum() / seen[100:].sum() == pytest.approx(1, abs=0.15)
  # All 300 genuine pairs exist; asking for more returns each once.
  a, b, gen = analyze.sample_pairs(labels, 1000, seed=1)
  assert gen.sum() == 50 * 6 and len(set(zip(a[gen], b[gen]))) == 300
