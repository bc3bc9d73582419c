"""The real-face report: baselines from metadata, the report over several FR models, its
ordering of a quality that knows the failing pairs, random and a quality that is wrong."""

import numpy as np

from crfiqa_jax.evaluation import realfaces


def test_pairs_report_orders_baselines(tmp_path):
  """A quality that knows which pairs fail beats random; the report says so per FR."""
  rng = np.random.default_rng(0)
  n = 300
  labels = rng.integers(0, 30, n)
  q = rng.random(n)
  a, b = np.triu_indices(n, k=1)
  genuine = labels[a] == labels[b]
  pq = np.minimum(q[a], q[b])
  sim = np.where(genuine, 0.6 * pq, 0.0) + 0.1 * rng.standard_normal(len(a))
  m = realfaces.pairs_report({"fr": sim}, genuine, a, b, {"learned": q, "anti": -q},
                             out_dir=tmp_path, title="t")
  s = m["summary"]["fr"]
  assert set(s) == {"learned", "anti", "random"}
  for c in ("erc_auc_1e-2", "erc_auc_1e-3", "pauc_1e-3"):
    assert s["learned"][c] < s["random"][c] < s["anti"][c], c
  assert (tmp_path / "erc_fr.png").exists() and (tmp_path / "metrics.json").exists()
  assert any("learned" in line for line in realfaces.summary_lines(m))


def test_metadata_baselines_keep_only_complete_ones():
  meta = [{"eye_distance": 30.0, "sharpness": 5.0}, {"eye_distance": 50.0, "det_score": 0.9}]
  got = realfaces.metadata_baselines(meta)
  assert list(got) == ["face_size"]
  np.testing.assert_array_equal(got["face_size"], [30.0, 50.0])
