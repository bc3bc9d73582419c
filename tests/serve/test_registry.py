"""The released models by name: the registry's facts, an absent file as one error line naming
the file, where to get it and where to put it, a file of other bytes warned about (both
SHA-256s) and used, the conversion done once and kept under the file's hash, the licence
shown once, and the name taken by every command that takes a model."""

import csv
import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import data
from crfiqa_jax.data.codecs import decode_image
from crfiqa_jax.evaluation import evaluate, realfaces
from crfiqa_jax.serve import calibration, export, model_io, registry, score, scorer, torch_import
from crfiqa_jax.train import job
from helpers import ROOT, face_like_images, tiny_config

S, L = registry.MODELS["cr-fiqa-s"], registry.MODELS["cr-fiqa-l"]


@pytest.fixture
def home(tmp_path, monkeypatch):
  h = tmp_path / "home"
  monkeypatch.setenv(registry.HOME_ENV, str(h))
  monkeypatch.setattr(registry, "_warned", set())
  return h


@pytest.fixture
def faces_dir(tmp_path):
  d = tmp_path / "faces"
  d.mkdir()
  for i, img in enumerate(face_like_images()[:5]):
    Image.fromarray(img).save(d / f"f{i}.png")
  return d


def test_the_released_facts():
  """The figures of the CR-FIQA release (its README's "Pretrained model" section)."""
  assert (S.filename, S.arch, S.size, S.licence) == ("32572backbone.pth", "iresnet50",
                                                     174_679_421, "CC BY-NC 4.0")
  assert (L.filename, L.arch, L.size, L.licence) == ("181952backbone.pth", "iresnet100",
                                                     261_219_071, "CC BY-NC 4.0")
  assert S.sha256 == "b9f457a6f00e0363a0cfb47ba4075e866d29e4e03c7989afe84faa61054dc8d4"
  assert L.sha256 == "5fca24736e4f8df5fbfc0f31ca533fbcca5eb119e2bad8fff751fe72c4c4d0fd"
  assert all(re.fullmatch("[0-9a-f]{64}", m.sha256) for m in registry.MODELS.values())
  assert "13bE4LP303XA_IzL1YOgG5eN0c8efHU9h" in S.url and "1siy_3eQSBuIV6U6" in L.url
  page = (ROOT / "docs" / "models.md").read_text()  # the page shows the registry as it is
  for m in registry.MODELS.values():
    for fact in (m.name, m.filename, m.arch, f"{m.size:,}", m.sha256, m.url, m.licence):
      assert fact in page, fact


def test_names_homes_and_paths(home, tmp_path, monkeypatch):
  assert registry.home() == home
  monkeypatch.delenv(registry.HOME_ENV)
  assert registry.home() == registry.Path.home() / ".cache" / "crfiqa_jax"
  assert registry.lookup("CR-FIQA-S") is S and registry.lookup("cr-fiqa-l") is L
  assert registry.lookup("cr-fiqa-m") is None and registry.lookup(None) is None
  assert model_io.model_kind("cr-fiqa-l") == "released"
  monkeypatch.chdir(tmp_path)
  (tmp_path / "cr-fiqa-s").mkdir()  # a folder of that name is a path, not the name
  assert registry.lookup("cr-fiqa-s") is None and model_io.model_kind("cr-fiqa-s") is None


def test_an_absent_file_is_one_line_naming_it_its_source_and_its_folder(home, faces_dir,
                                                                      tmp_path, capsys):
  rc = score.main(["--checkpoint=cr-fiqa-s", f"--input={faces_dir}",
                   f"--output={tmp_path / 'q.csv'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  for fact in ("error: cr-fiqa-s needs 32572backbone.pth", "174,679,421 bytes", S.url,
               f"put it in {home}", "CRFIQA_JAX_HOME"):
    assert fact in err[0], (fact, err[0])
  with pytest.raises(FileNotFoundError, match=r"181952backbone\.pth.*iresnet100"):
    model_io.kind_of_existing("cr-fiqa-l")


def test_the_hash_is_remembered_until_the_file_changes(home, tmp_path, monkeypatch):
  f = tmp_path / "w.bin"
  f.write_bytes(b"abc" * 1000)
  want = hashlib.sha256(b"abc" * 1000).hexdigest()
  assert registry.sha256(f) == want
  calls = []
  monkeypatch.setattr(registry, "_hash_file", lambda p: calls.append(p) or "again")
  assert registry.sha256(f) == want and not calls  # remembered: the file is not read
  f.write_bytes(b"abd" * 1000)
  assert registry.sha256(f) == "again" and calls == [f.absolute()]
  (home / registry.HASHES_FILE).write_text("{not json")  # a broken cache is only skipped
  assert registry.sha256(f) == "again"


def _torch_ref(arch, seed=0):
  torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
  import torch_iresnet  # tests/torch_iresnet.py, needs torch
  return torch, torch_iresnet.randomize_(torch_iresnet.make(arch), seed=seed).eval()


def _torch_quality(torch, ref, images):
  x = torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
  with torch.no_grad():
    return ref(x)[1].numpy()


@pytest.fixture
def released_tiny(home, monkeypatch):
  """A released-layout iresnet_tiny saved as 32572backbone.pth in $CRFIQA_JAX_HOME, and
  cr-fiqa-s's entry patched to its architecture, size and SHA-256: (torch, reference)."""
  torch, ref = _torch_ref("iresnet_tiny")
  home.mkdir(parents=True)
  path = home / S.filename
  torch.save(ref.state_dict(), path)
  monkeypatch.setitem(registry.MODELS, S.name, dataclasses.replace(
      S, arch="iresnet_tiny", size=path.stat().st_size,
      sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
  return torch, ref


def test_a_name_converts_once_then_reads_its_cache(released_tiny, home, capsys, caplog,
                                                   monkeypatch):
  torch, ref = released_tiny
  images = face_like_images()
  q = scorer.Scorer.from_checkpoint("cr-fiqa-s", engine="jax")(images)
  np.testing.assert_allclose(q, _torch_quality(torch, ref, images), rtol=1e-4, atol=1e-4)
  digest = registry.MODELS["cr-fiqa-s"].sha256
  out = home / "converted" / digest
  assert json.loads((out / model_io.MODEL_FILE).read_text())["arch"] == "iresnet_tiny"
  err = capsys.readouterr().err
  assert err.count("CC BY-NC 4.0") == 1 and "non-commercial" in err
  assert "other bytes" not in caplog.text  # the file is the registered one
  # Later uses read neither the .pth nor its bytes, and say the licence no more.
  monkeypatch.setattr(torch_import, "load_torch", lambda *a, **k: pytest.fail("converted"))
  monkeypatch.setattr(registry, "_hash_file", lambda p: pytest.fail("hashed again"))
  again = scorer.Scorer.from_checkpoint("CR-FIQA-S", engine="jax")(images)
  np.testing.assert_array_equal(again, q)
  assert "CC BY-NC" not in capsys.readouterr().err


def test_every_command_takes_the_name(released_tiny, home, faces_dir, tmp_path, capsys):
  torch, ref = released_tiny
  # score (and its --calibrated, fitted by calibration on the name)
  assert score.main(["--checkpoint=cr-fiqa-s", f"--input={faces_dir}",
                     f"--output={tmp_path / 'q.csv'}", "--engine=jax"]) == 0
  with open(tmp_path / "q.csv") as f:
    rows = list(csv.DictReader(f))
  imgs = np.stack([np.asarray(Image.open(r["path"])) for r in rows])
  np.testing.assert_allclose([float(r["quality"]) for r in rows],
                             _torch_quality(torch, ref, imgs), rtol=1e-4, atol=1e-4)
  assert calibration.main(["--checkpoint=cr-fiqa-s", f"--reference={tmp_path / 'q.csv'}"]) == 0
  assert (home / "converted" / registry.MODELS["cr-fiqa-s"].sha256
          / calibration.FILE_NAME).is_file()
  assert score.main(["--checkpoint=cr-fiqa-s", f"--input={faces_dir}", "--calibrated",
                     f"--output={tmp_path / 'c.csv'}", "--engine=jax"]) == 0
  # export
  assert export.main(["--checkpoint=cr-fiqa-s", "--format=stablehlo",
                      f"--output={tmp_path / 'm.shlo'}"]) == 0
  assert (tmp_path / "m.shlo").stat().st_size > 0
  # evaluate (quality and FR from the name) and the held-out report's other models
  bench = _pairs_records(tmp_path / "bench")
  assert evaluate.main([f"--benchmark=b={bench}", "--quality=s=cr-fiqa-s", "--fr=s=cr-fiqa-s",
                        f"--out={tmp_path / 'ev'}", "--fmr=1e-2", "--engine=jax"]) == 0
  assert json.loads((tmp_path / "ev" / "results.json").read_text())["benchmarks"]["b"]["s"]
  got = realfaces.compare_qualities("s=cr-fiqa-s", bench)["s"]
  stored = np.stack([decode_image(data.encode_jpeg(x, quality=100))
                     for x in face_like_images()[:6]])  # the pixels the records hold
  np.testing.assert_allclose(got, _torch_quality(torch, ref, stored), rtol=1e-4, atol=1e-4)
  # the main job's --config.init_checkpoint
  cfg = tiny_config(data_dir=str(bench), init_checkpoint="cr-fiqa-s", embedding_dim=64,
                    image_size=112)
  _, _, info = model_io.load_model(cfg.init_checkpoint)
  assert info["arch"] == "iresnet_tiny" and info["embedding_dim"] == 64
  assert "error" not in capsys.readouterr().err


def _pairs_records(out):
  """6 face-like 112-pixel crops of 3 identities as a 'train' and a 'test' split with pairs."""
  imgs = face_like_images()[:6]

  def gen():
    for i, img in enumerate(imgs):
      yield {"image": data.encode_jpeg(img, quality=100), "label": i // 2,
             "metadata": {"path": f"f{i}.png"}}

  data.write_records(out, {"train": gen, "test": gen}, num_classes=3, num_shards=1,
                     metadata={"test_pairs": [[0, 1, 1], [2, 3, 1], [4, 5, 1], [0, 2, 0],
                                              [1, 4, 0], [3, 5, 0], [0, 5, 0]]},
                     progress=False)
  return out


def test_init_checkpoint_name_is_checked_before_step_1(home, tiny_records, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"--config.init_checkpoint: cr-fiqa-s needs "
                                              r"32572backbone\.pth"):
    job.preflight(tiny_config(data_dir=tiny_records, init_checkpoint="cr-fiqa-s"),
                  tmp_path / "wd")


def test_an_iresnet50_file_of_other_bytes_warns_with_both_hashes_then_scores(
    home, faces_dir, tmp_path, caplog):
  """The real cr-fiqa-s entry: an iresnet50 in the released layout (random weights, so
  other bytes) under the official name is used after a warning naming both SHA-256s."""
  torch, ref = _torch_ref("iresnet50", seed=3)
  home.mkdir(parents=True)
  torch.save(ref.state_dict(), home / S.filename)
  mine = hashlib.sha256((home / S.filename).read_bytes()).hexdigest()
  assert mine != S.sha256
  assert score.main(["--checkpoint=cr-fiqa-s", f"--input={faces_dir}", "--engine=jax",
                     f"--output={tmp_path / 'q.csv'}", "--batch-size=3"]) == 0
  warning = [r.getMessage() for r in caplog.records if "other bytes" in r.getMessage()]
  assert len(warning) == 1 and mine in warning[0] and S.sha256 in warning[0], warning
  with open(tmp_path / "q.csv") as f:
    rows = list(csv.DictReader(f))
  imgs = np.stack([np.asarray(Image.open(r["path"])) for r in rows])
  np.testing.assert_allclose([float(r["quality"]) for r in rows],
                             _torch_quality(torch, ref, imgs), rtol=1e-3, atol=1e-3)
  assert os.path.isdir(registry.converted_dir(mine))
