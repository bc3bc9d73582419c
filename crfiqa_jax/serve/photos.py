"""`score_photos`: the quality of photo files in Python, with where the face was found.

    from crfiqa_jax import score_photos
    for r in score_photos(["a.jpg", "b.png"], checkpoint="cr-fiqa-s"):
      print(r.path, r.quality, r.box, r.failure)

With `detect=True` (the default; the [detect] extra) each photo is decoded upright, its
faces are found by MTCNN, one is chosen (`face="center"` or "largest", as `score --detect`)
and aligned to the ArcFace template before scoring (crfiqa_jax.data.faces). With
`detect=False` the files are taken to be aligned crops already (resized with a warning when
they are not the model's size). A photo that cannot be scored is a result too: quality NaN
and its `failure` ("unreadable (...)", "no face found").
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

import numpy as np

from crfiqa_jax.data import faces, sources
from crfiqa_jax.serve import inference
from crfiqa_jax.serve.scorer import Scorer


@dataclasses.dataclass(frozen=True)
class PhotoScore:
  """One photo's result.

  path:        the file, as given
  quality:     the raw CR-FIQA quality (higher = more useful for recognition); NaN if failed
  box:         (x0, y0, x1, y1) of the chosen face in the photo's pixels, or None (no
               detection, or failed)
  landmarks:   float [5, 2] (x, y) of its eyes, nose tip and mouth corners, or None
  confidence:  MTCNN's confidence in that face, or None
  failure:     why the photo has no quality ("unreadable (...)", "no face found"), or None
  """

  path: str
  quality: float
  box: tuple[float, float, float, float] | None = None
  landmarks: np.ndarray | None = None
  confidence: float | None = None
  failure: str | None = None

  @property
  def ok(self) -> bool:
    return self.failure is None


def score_photos(paths: str | os.PathLike | Iterable[str | os.PathLike], checkpoint=None, *,
                 scorer: Scorer | None = None, detect: bool = True, face: str = "center",
                 engine: str = "auto", batch_size: int = 64) -> list[PhotoScore]:
  """[PhotoScore] per path, in order (module docstring).

  checkpoint: any model path `score` takes, or a released model's name ("cr-fiqa-s",
  "cr-fiqa-l"); or pass a `scorer` (crfiqa_jax.Scorer) to reuse a loaded model.
  face: which face of a photo with several, "center" or "largest". engine: "auto", "jax" or
  "onnxruntime" (crfiqa_jax.serve.engines).
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  paths = [os.fspath(p) for p in paths]
  if scorer is None:
    if checkpoint is None:
      raise ValueError("score_photos needs a checkpoint (a model path or a released "
                       "model's name) or a scorer")
    scorer = Scorer.from_checkpoint(checkpoint, engine=engine, batch_size=batch_size)
  size = scorer.image_size
  found: dict[int, tuple] = {}  # photo index → (box [4], landmarks [5, 2], confidence)
  if detect:
    if face not in faces.RULES:
      raise ValueError(f"face={face!r}; choose one of {faces.RULES}")
    faces.require_detector()

    def load(i: int) -> np.ndarray:
      try:
        image = faces.load_photo(paths[i])
      except Exception as e:  # any unreadable file is a result with its reason
        raise sources.SkipImage(f"unreadable ({type(e).__name__}: {e})") from None
      boxes, scores, marks = faces.detect_faces(image)
      if not len(boxes):
        raise sources.SkipImage(faces.NO_FACE)
      k = faces.choose_face(boxes, image.shape, face)
      found[i] = (boxes[k], marks[k], float(scores[k]))
      return faces.align(image, marks[k], size)

    source = sources.ImageSource(load, len(paths), paths.__getitem__)
  else:
    source = sources.files_source(paths, image_size=size)
  _, quality, failures = inference.extract(scorer.predictor, source, features="none",
                                           batch_size=scorer.batch_size, progress=False,
                                           gather=False)
  out = []
  for i, path in enumerate(paths):
    box, marks, conf = found.get(i, (None, None, None))
    out.append(PhotoScore(
        path, float(quality[i]) if i not in failures else float("nan"),
        tuple(float(v) for v in box) if box is not None and i not in failures else None,
        np.asarray(marks, np.float64) if marks is not None and i not in failures else None,
        conf if i not in failures else None, failures.get(i)))
  return out
