import json

import numpy as np
import pytest

from crfiqa_jax.data import faces
from crfiqa_jax.evaluation import ijbc

# Three templates; T1 has two media (media 10 with two images, media 11 with one).
FEATS = np.array([[1.0, 0], [0, 1], [0, 1], [1, 0], [0, 1]])
QUAL = np.array([1.0, 0.0, 0.5, 0.5, 1.0])
TIDS = np.array([1, 1, 1, 2, 3])
MIDS = np.array([10, 10, 11, 20, 30])
PAIRS = np.array([[1, 2], [1, 3], [2, 3]])
LABELS = np.array([True, False, False])


def test_quality_weighted_templates_hand_computed():
  # Weighted: media 10 → ([1,0]·1 + [0,1]·0)/2 = [.5, 0]; media 11 → [0, .5]; T1 = [.5, .5]
  # normalised → (1/√2, 1/√2); T2 = [1, 0]; T3 = [0, 1].
  scores, _, pair_q = ijbc.verify(FEATS, QUAL, TIDS, MIDS, PAIRS, LABELS)
  np.testing.assert_allclose(scores, [2 ** -0.5, 2 ** -0.5, 0.0], atol=1e-12)
  np.testing.assert_allclose(pair_q, [0.0, 0.0, 0.5])  # min over both templates' images
  # Unweighted: media 10 → [.5, .5], media 11 → [0, 1]; T1 ∝ [.5, 1.5].
  scores_u, _, _ = ijbc.verify(FEATS, QUAL, TIDS, MIDS, PAIRS, LABELS, weighted=False)
  t1 = np.array([0.5, 1.5]) / np.linalg.norm([0.5, 1.5])
  np.testing.assert_allclose(scores_u, [t1[0], t1[1], 0.0], atol=1e-12)


def test_minmax_weights():
  np.testing.assert_allclose(ijbc.minmax([2.0, 4.0, 3.0]), [0, 1, 0.5])
  np.testing.assert_allclose(ijbc.minmax([3.0, 3.0]), [1, 1])


def test_tar_at_far():
  scores = np.r_[[0.9, 0.5, 0.3], np.arange(10) / 10]
  gen = np.r_[[True] * 3, [False] * 10]
  tar = ijbc.tar_at_far(scores, gen, fars=(1e-1, 1e-2))
  # FAR 0.1: k = 1 → threshold = 2nd highest impostor (0.8) → only 0.9 accepted.
  assert tar == {"1e-01": pytest.approx(1 / 3), "1e-02": None}


def test_similarity_transform_and_alignment():
  angle, scale, shift = 0.3, 1.7, np.array([20.0, -5.0])
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  src = (faces.ARCFACE_TEMPLATE - shift) @ np.linalg.inv(scale * rot).T  # dst = sR·src + t
  m = faces.similarity_transform(src, faces.ARCFACE_TEMPLATE)
  np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
  np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
  # A bright dot at the source's left-eye position lands on the template's left eye.
  img = np.zeros((250, 250, 3), np.uint8)
  lm = faces.ARCFACE_TEMPLATE * 2 + 10  # a face twice as large, shifted
  x, y = np.round(lm[0]).astype(int)
  img[y - 3:y + 4, x - 3:x + 4] = 255
  out = faces.align(img, lm)
  w = out[..., 0].astype(np.float64)
  ys, xs = np.mgrid[:112, :112]
  cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()  # centroid of the dot
  assert abs(cx - 38.29) <= 1.0 and abs(cy - 51.70) <= 1.0, (cx, cy)


def test_cli_in_the_ijbc_layout(tmp_path):
  meta = tmp_path / "meta"
  meta.mkdir()
  names = [f"img{i}.jpg" for i in range(5)]
  (meta / "ijbc_face_tid_mid.txt").write_text(
      "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, TIDS, MIDS)))
  (meta / "ijbc_template_pair_label.txt").write_text(
      "".join(f"{a} {b} {int(l)}\n" for (a, b), l in zip(PAIRS, LABELS)))
  np.savez(tmp_path / "fr.npz", **{n: f for n, f in zip(names, FEATS)})
  (tmp_path / "q.csv").write_text("path,quality\n" + "".join(
      f"{n},{q}\n" for n, q in zip(names, QUAL)))
  rc = ijbc.main([f"--root={tmp_path}", f"--fr={tmp_path / 'fr.npz'}",
                  f"--quality={tmp_path / 'q.csv'}", f"--out={tmp_path / 'out'}"])
  assert rc == 0
  res = json.loads((tmp_path / "out" / "ijbc.json").read_text())
  assert set(res) == {"unweighted", "quality_weighted", "template_pair_erc_recomputed",
                      "template_pair_erc_fixed"}
  (meta / "ijbc_template_pair_label.txt").write_text("1 9 1\n")
  assert ijbc.main([f"--root={tmp_path}", f"--fr={tmp_path / 'fr.npz'}",
                    f"--quality={tmp_path / 'q.csv'}", f"--out={tmp_path / 'out'}"]) == 2


def _random_ijbc(seed=0, n_templates=40, per_template=3):
  """Templates of 2-4 images in 1-2 media; features near a per-identity direction with
  quality-dependent noise, so quality-weighted and unweighted templates differ."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 12, n_templates)
  proto = rng.normal(size=(12, 16))
  tids, mids, feats, qual = [], [], [], []
  for t in range(n_templates):
    for j in range(per_template):
      q = rng.uniform()
      tids.append(t)
      mids.append(100 * t + j % 2)
      qual.append(q)
      feats.append(proto[ids[t]] * 3 + rng.normal(size=16) * (3 - 2.5 * q))
  pairs = np.array([(a, b) for a in range(n_templates) for b in range(a + 1, n_templates)])
  labels = ids[pairs[:, 0]] == ids[pairs[:, 1]]
  return (np.array(feats), np.array(qual), np.array(tids), np.array(mids), pairs, labels)


def test_erc_uses_unweighted_templates_and_the_released_algorithm():
  from released_erc import released_erc
  feats, qual, tids, mids, pairs, labels = _random_ijbc()
  res = ijbc.evaluate(feats, qual, tids, mids, pairs, labels)
  # Independent template scores: unweighted = mean per media, sum, L2-normalise.
  tfeat = {}
  for t in np.unique(tids):
    media = [feats[(tids == t) & (mids == m)].mean(0) for m in np.unique(mids[tids == t])]
    v = np.sum(media, 0)
    tfeat[t] = v / np.linalg.norm(v)
  scores = np.array([tfeat[a] @ tfeat[b] for a, b in pairs])
  tq = {t: qual[tids == t].min() for t in np.unique(tids)}
  pair_q = np.array([min(tq[a], tq[b]) for a, b in pairs])
  want = released_erc(scores, labels, pair_q, fmrs=(1e-2, 1e-3, 1e-4))
  got = np.array(res["template_pair_erc_recomputed"]["fnmr"], dtype=float)
  np.testing.assert_allclose(got, want, atol=1e-12)
  # The quality-weighted scores would give a different curve: the ERC must not use them.
  w_scores, _, _ = ijbc.verify(feats, qual, tids, mids, pairs, labels, weighted=True)
  assert not np.allclose(released_erc(w_scores, labels, pair_q, fmrs=(1e-2,)), want[:1])
  from crfiqa_jax.evaluation import erc
  fixed = erc.error_versus_reject(scores, labels, pair_q, fmr=[1e-2, 1e-3, 1e-4],
                                  threshold="fixed")
  np.testing.assert_allclose(np.array(res["template_pair_erc_fixed"]["fnmr"], float), fixed)
  assert res["template_pair_erc_fixed"]["auc"][0] == pytest.approx(
      erc.erc_auc(erc.RELEASED_RATIOS, fixed[0]))


def test_cli_sums_raw_embeddings_of_image_and_flip(tmp_path, monkeypatch):
  """A model FR input goes through inference.extract(features="sum"): raw emb + raw flip,
  the released eval_ijbc_qs.py's feature (normalised halves would drop the norms)."""
  from crfiqa_jax.serve import engines, inference
  raw, raw_flip = np.array(FEATS) * [[3.0], [1], [0.2], [1], [5]], np.array(FEATS)[:, ::-1]
  asked = {}

  def fake_extract(predictor, source, *, features="concat", **kw):
    asked.setdefault("features", []).append(features)
    if features == "sum":
      return raw + raw_flip, None, {}
    return None, QUAL.astype(np.float32), {}

  monkeypatch.setattr(inference, "extract", fake_extract)
  monkeypatch.setattr(engines, "load_predictor", lambda path, arch=None, **kw: object())
  monkeypatch.setattr(ijbc, "aligned_source", lambda root, names: names)
  meta = tmp_path / "meta"
  meta.mkdir()
  names = [f"img{i}.jpg" for i in range(5)]
  (meta / "ijbc_face_tid_mid.txt").write_text(
      "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, TIDS, MIDS)))
  (meta / "ijbc_template_pair_label.txt").write_text(
      "".join(f"{a} {b} {int(l)}\n" for (a, b), l in zip(PAIRS, LABELS)))
  assert ijbc.main([f"--root={tmp_path}", f"--fr={tmp_path / 'model'}",
                    f"--quality={tmp_path / 'model'}", f"--out={tmp_path / 'out'}"]) == 0
  assert asked["features"] == ["sum", "none"]
  res = json.loads((tmp_path / "out" / "ijbc.json").read_text())
  want = ijbc.evaluate(raw + raw_flip, QUAL, TIDS, MIDS, PAIRS, LABELS)
  assert res["quality_weighted"] == json.loads(json.dumps(want["quality_weighted"]))
