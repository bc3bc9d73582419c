"""dlib's 128-d face-recognition ResNet as an external FR model for ERCs (`evaluate --fr dlib`).

The paper ranks quality with FR models other than the one it trained with; dlib's model is
one that installs offline (optional extra [dlib]: dlib-bin + face-recognition-models, whose
weights are public domain / CC0). Recipe for an ArcFace-aligned 112×112 crop:

  1. dlib's 5-point shape predictor on the crop, inside the fixed box (7, 23, 95, 113)
     (left, top, right, bottom: where dlib's own detector puts the face on such crops);
  2. dlib.get_face_chip(crop, shape, size=150, padding=0.25): dlib's own alignment;
  3. the ResNet → 128-d descriptor; comparison = cosine of the L2-normalised descriptors.

A plain resize of the crop to 150 px instead of steps 1-2 costs verification accuracy and
breaks dlib's 0.6 distance threshold. Only the 5-point predictor is used: the package's
68-point model has a non-commercial licence.

The model files are found inside the installed face_recognition_models package without
importing it (its __init__ imports pkg_resources, i.e. setuptools).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np

from crfiqa_jax import cli, models
from crfiqa_jax.data.sources import SkipImage

log = logging.getLogger(__name__)

DLIB_USE = "the dlib FR model"
BOX = (7, 23, 95, 113)  # left, top, right, bottom on the 112×112 ArcFace crop
CHIP_SIZE, CHIP_PADDING = 150, 0.25
SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
FR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def model_dir() -> Path:
  """face_recognition_models/models of the installed package, located without importing it."""
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise cli.MissingExtra("dlib", DLIB_USE)
  folder = Path(next(iter(spec.submodule_search_locations))) / "models"
  for name in (SHAPE_MODEL, FR_MODEL):
    if not (folder / name).is_file():
      raise FileNotFoundError(f"{folder / name} is missing: reinstall face-recognition-models")
  return folder


@functools.cache
def _models():
  dlib = cli.optional_import("dlib", "dlib", DLIB_USE)
  folder = model_dir()
  return (dlib, dlib.shape_predictor(str(folder / SHAPE_MODEL)),
          dlib.face_recognition_model_v1(str(folder / FR_MODEL)))


def chip(crop: np.ndarray) -> np.ndarray:
  """uint8 [112, 112, 3] ArcFace crop → dlib's aligned uint8 [150, 150, 3] chip."""
  dlib, shape_predictor, _ = _models()
  crop = np.ascontiguousarray(crop)
  if crop.shape != (112, 112, 3) or crop.dtype != np.uint8:
    raise ValueError(f"dlib FR expects uint8 [112, 112, 3] aligned crops, got "
                     f"{crop.dtype} {crop.shape}")
  shape = shape_predictor(crop, dlib.rectangle(*BOX))
  return np.asarray(dlib.get_face_chip(crop, shape, size=CHIP_SIZE, padding=CHIP_PADDING))


def features(crops: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
  """uint8 [N, 112, 112, 3] aligned crops → L2-normalised float64 [N, 128] descriptors."""
  _, _, net = _models()
  out = []
  for start in range(0, len(crops), batch_size):
    chips = [chip(c) for c in crops[start:start + batch_size]]
    out.extend(np.asarray(d, np.float64) for d in net.compute_face_descriptor(chips))
  feats = np.stack(out) if out else np.zeros((0, 128))
  return models.l2_normalize(feats, axis=1)


def source_features(source, *, batch_size: int = 32) -> np.ndarray:
  """Descriptors [N, 128] of an image source (crfiqa_jax.data.sources); NaN rows where an
  image could not be loaded (logged; evaluate leaves those pairs out)."""
  out = np.full((len(source), 128), np.nan)
  for start in range(0, len(source), batch_size):
    loaded = {}
    for i in range(start, min(start + batch_size, len(source))):
      try:
        loaded[i] = source.load(i)
      except SkipImage as e:
        log.warning("dlib FR: %s: %s (its pairs are left out)", source.name(i), e)
    if loaded:
      out[list(loaded)] = features(np.stack(list(loaded.values())))
  return out
