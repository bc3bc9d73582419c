"""`python -m crfiqa_jax.score`: rows in input order with failures reported, strict sizes
and list inputs, a killed run resumed to the same bytes, torn lines and foreign files."""

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import xla_flags
from crfiqa_jax import models
from crfiqa_jax.serve import model_io, score
from helpers import FULL_DISK, fill, limit_file_size, random_variables, small_filesystem


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = models.create_model("iresnet_tiny")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
  out = tmp_path_factory.mktemp("export") / "model"
  model_io.save_exported(out, variables, arch="iresnet_tiny", embedding_dim=64)
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
                   "--batch-size=2", "--precision=fp32"])
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


def _score_cmd(ckpt, faces, out, *extra):
  return [sys.executable, "-m", "crfiqa_jax.score", f"--checkpoint={ckpt}",
          f"--input={faces}", f"--output={out}", "--batch-size=8", *extra]


def _env():
  return dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def scoring_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("scoring")
  model = models.create_model("iresnet_tiny", embedding_dim=16)
  ckpt = root / "model"
  model_io.save_exported(ckpt, random_variables(model, 32, seed=3), arch="iresnet_tiny",
                         embedding_dim=16, image_size=32)
  faces = root / "faces"
  faces.mkdir()
  rng = np.random.default_rng(0)
  base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
  for i in range(3000):
    img = np.roll(base, i, axis=1)
    Image.fromarray(img).save(faces / f"{i:05d}.jpg", quality=90)
  (faces / "00007.jpg").write_bytes(b"not a jpeg")  # a failure in the middle
  return ckpt, faces


@pytest.fixture(scope="module")
def full_scores(scoring_setup, tmp_path_factory):
  """The uninterrupted run's CSV bytes."""
  ckpt, faces = scoring_setup
  full = tmp_path_factory.mktemp("full") / "full.csv"
  r = subprocess.run(_score_cmd(ckpt, faces, full), env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 1 and "00007.jpg" in r.stderr  # the broken file, reported
  return full.read_bytes()


def _signal_midway(cmd, part, signum):
  """Starts `cmd`, sends `signum` once it wrote 200 rows; (return code, stderr)."""
  p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    if part.exists() and len(part.read_bytes().splitlines()) > 200:  # rows written
      break
    time.sleep(0.005)
  p.send_signal(signum)
  return p.wait(timeout=300), p.stderr.read()


def test_score_killed_then_resumed_equals_uninterrupted(scoring_setup, full_scores, tmp_path):
  ckpt, faces = scoring_setup
  part = tmp_path / "part.csv"
  _signal_midway(_score_cmd(ckpt, faces, part), part, signal.SIGKILL)
  n_before = len(part.read_text().splitlines()) - 1
  assert 0 < n_before < 3000, "the run was not killed midway"
  r = subprocess.run(_score_cmd(ckpt, faces, part, "--resume"), env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stderr[-2000:]
  assert part.read_bytes() == full_scores


def test_sigterm_writes_the_batch_in_hand_then_resume_completes(scoring_setup, full_scores,
                                                                 tmp_path):
  """A preemption notice: the batch being scored is written, the run exits with 75 and one
  `stopped:` line; every row on disk is complete and --resume gives the same bytes."""
  ckpt, faces = scoring_setup
  part = tmp_path / "part.csv"
  rc, err = _signal_midway(_score_cmd(ckpt, faces, part), part, signal.SIGTERM)
  assert rc == 75, err[-2000:]
  kept = part.read_bytes()
  rows = kept.count(b"\n") - 1
  stopped = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
  assert len(stopped) == 1 and "Traceback" not in err, err[-2000:]
  assert "SIGTERM" in stopped[0] and f"first {rows:,} of its rows" in stopped[0]
  assert 200 <= rows < 3000 and kept.endswith(b"\r\n") and full_scores.startswith(kept)
  r = subprocess.run(_score_cmd(ckpt, faces, part, "--resume"), env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stderr[-2000:]
  assert part.read_bytes() == full_scores


@pytest.mark.parametrize("how", FULL_DISK)
def test_full_disk_keeps_every_complete_row(scoring_setup, full_scores, tmp_path, how):
  """The CSV's disk fills up (a small tmpfs, or the file-size limit): exit code 2, one error
  line naming the file and the bytes the batch needed; the file holds whole rows only, and
  --resume once there is room gives the uninterrupted run's bytes."""
  ckpt, faces = scoring_setup
  n = 400  # the first 400 inputs: their rows are the full run's first 400 (batches of 8)
  listing = tmp_path / "list.txt"
  listing.write_text("".join(f"{faces / f'{i:05d}.jpg'}\n" for i in range(n)))
  want = b"".join(full_scores.splitlines(keepends=True)[:n + 1])
  with contextlib.ExitStack() as stack:
    if how == "tmpfs":
      out = stack.enter_context(small_filesystem(tmp_path / "fs", 64 * 1024)) / "q.csv"
      filler = fill(out.parent, 4096)
      cmd = _score_cmd(ckpt, listing, out)
    else:
      out, filler = tmp_path / "q.csv", None
      cmd = limit_file_size(4096, _score_cmd(ckpt, listing, out))
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(out) in errors[0] and "needs" in errors[0] and "bytes" in errors[0]
    kept = out.read_bytes()
    assert 0 < kept.count(b"\n") - 1 < n and kept.endswith(b"\r\n") and want.startswith(kept)
    if filler is not None:
      filler.unlink()
    r = subprocess.run(_score_cmd(ckpt, listing, out, "--resume"), env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    assert out.read_bytes() == want


def test_resume_cuts_a_torn_line_and_refuses_foreign_files(tmp_path):
  names = [f"/x/{i}.jpg" for i in range(5)]
  out = tmp_path / "s.csv"
  out.write_text("path,quality\n/x/0.jpg,0.5\n/x/1.jpg,0.25\n/x/2.j")
  assert score.completed_rows(out, names) == 2
  assert out.read_text() == "path,quality\n/x/0.jpg,0.5\n/x/1.jpg,0.25\n"
  out.write_text("path,quality\n/y/0.jpg,0.5\n")
  with pytest.raises(ValueError, match="not a run over these inputs"):
    score.completed_rows(out, names)
