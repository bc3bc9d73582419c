import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import convert, models, score


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = models.create_model("iresnet_tiny")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
  out = tmp_path_factory.mktemp("export") / "model"
  convert.save_inference(out, variables, arch="iresnet_tiny", embedding_dim=64)
  return out, model, variables


@pytest.fixture
def folder(tmp_path):
  rng = np.random.default_rng(0)
  d = tmp_path / "faces"
  (d / "sub").mkdir(parents=True)
  imgs = {}
  for name in ("b.jpg", "a.png", "sub/c.png"):
    arr = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(arr).save(d / name)
    imgs[name] = arr
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "small.png")
  (d / "broken.jpg").write_bytes(b"\xff\xd8 not really")
  (d / "notes.txt").write_text("ignored: not an image")
  return d, imgs


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_cli_scores_in_order_and_reports_failures(exported, folder, tmp_path, capsys):
  out, model, variables = exported
  d, imgs = folder
  rc = score.main([f"--checkpoint={out}", f"--input={d}", f"--output={tmp_path / 's.csv'}",
                   "--batch-size=2"])
  rows = _read(tmp_path / "s.csv")
  assert rc == 1  # one unreadable file
  assert [r["path"] for r in rows] == [str(d / n) for n in
                                       ("a.png", "b.jpg", "broken.jpg", "small.png", "sub/c.png")]
  assert rows[2]["quality"] == "" and "broken.jpg" in capsys.readouterr().err
  # Independent check: the model applied directly to the normalised pixels.
  x = np.stack([imgs["a.png"], imgs["sub/c.png"]]).astype(np.float32)
  _, q = model.apply(variables, (x - 127.5) / 127.5, train=False)
  np.testing.assert_allclose([float(rows[0]["quality"]), float(rows[4]["quality"])], q,
                             rtol=1e-5, atol=1e-5)
  assert rows[3]["quality"] != ""  # resized with a warning


def test_strict_refuses_wrong_size_and_list_input(exported, folder, tmp_path):
  out, _, _ = exported
  d, _ = folder
  lst = tmp_path / "list.txt"
  lst.write_text(f"{d / 'small.png'}\n{d / 'a.png'}\n")
  rc = score.main([f"--checkpoint={out}", f"--input={lst}", f"--output={tmp_path / 's.csv'}",
                   "--strict"])
  rows = _read(tmp_path / "s.csv")
  assert rc == 1 and rows[0]["quality"] == "" and rows[1]["quality"] != ""


def test_bad_checkpoint_and_input(tmp_path, folder):
  d, _ = folder
  assert score.main(["--checkpoint=/nonexistent", f"--input={d}", "--output=x.csv"]) == 2
  assert score.main(["--checkpoint=/nonexistent", f"--input={tmp_path / 'none'}",
                     "--output=x.csv"]) == 2


def test_python_api_on_arrays(exported):
  out, model, variables = exported
  s = score.Scorer.from_checkpoint(out, batch_size=3)
  imgs = np.random.default_rng(1).integers(0, 255, (5, 112, 112, 3), dtype=np.uint8)
  q = s(imgs)
  _, want = model.apply(variables, (imgs.astype(np.float32) - 127.5) / 127.5, train=False)
  np.testing.assert_allclose(q, want, rtol=1e-5, atol=1e-5)
  feats, _ = s.embed(imgs)
  assert feats.shape == (5, 128)
  np.testing.assert_allclose(np.linalg.norm(feats[:, :64], axis=1), 1, rtol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    s(imgs.astype(np.float32))
