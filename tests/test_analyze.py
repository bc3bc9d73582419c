import json

import numpy as np

from crfiqa_jax import analyze, main, train
from test_train import TINY


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
  cfg = main.load_config("base", dict(TINY, data_dir=str(tiny_records), total_steps="2"))
  train.train(cfg, tmp_path / "wd")
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
  from crfiqa_jax import score
  s = score.Scorer.from_checkpoint(tmp_path / "wd", batch_size=4)
  assert s.image_size == 32
  q = s(np.zeros((3, 32, 32, 3), np.uint8))
  assert q.shape == (3,) and np.isfinite(q).all()
