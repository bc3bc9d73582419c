"""`python -m crfiqa_jax.prepare`: each kind through the command line, its report, the CLI
contract (one error line, exit code 2) on bad input, and a SIGTERM that abandons the
conversion cleanly (exit code 75)."""

import signal
import subprocess
import sys
import time

import numpy as np

from crfiqa_jax import data
from crfiqa_jax.data import prepare
from helpers import FIXTURES


def test_synthetic_and_bin_through_the_command_line(tmp_path, capsys):
  assert prepare.main(["synthetic", str(tmp_path / "syn"), "--identities=3",
                       "--per-identity=2", "--eval-identities=2", "--eval-per-identity=2",
                       "--image-size=24"]) == 0
  assert "synthetic: wrote 10 images" in capsys.readouterr().out
  info = data.read_info(tmp_path / "syn")
  assert info["splits"] == {"train": 6, "test": 4} and info["test_pairs"] == "all"
  assert data.open_dataset(tmp_path / "syn")[0]["image"].shape == (24, 24, 3)
  assert prepare.main(["bin", str(FIXTURES / "tiny_verification.bin"),
                       str(tmp_path / "lfw")]) == 0
  report = capsys.readouterr().out
  assert "read" in report and "wrote" in report and "→" in report
  a, b, genuine = data.read_pairs(tmp_path / "lfw")
  assert len(a) == len(genuine) > 0 and np.all(b < len(data.open_dataset(tmp_path / "lfw",
                                                                          "test")))


def test_bad_input_is_one_error_line(tmp_path, capsys):
  assert prepare.main(["folder", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]
  try:
    prepare.main(["kind-that-does-not-exist", "a", "b"])
  except SystemExit as e:
    assert e.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "--help" in err[-1]


def test_sigterm_abandons_the_conversion_and_leaves_no_dataset(tmp_path):
  """A real SIGTERM while TFDS writes: exit code 75, one `stopped:` line, no dataset and no
  unfinished folder in OUT; the same command then writes the whole dataset."""
  out = tmp_path / "syn"
  cmd = [sys.executable, "-m", "crfiqa_jax.prepare", "synthetic", str(out),
         "--identities=100", "--per-identity=20", "--eval-identities=2",
         "--eval-per-identity=2", "--image-size=24"]
  p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    if any("incomplete" in q.name for q in out.rglob("*")):  # TFDS is writing
      break
    time.sleep(0.01)
  p.send_signal(signal.SIGTERM)
  stdout, stderr = p.communicate(timeout=300)
  assert p.returncode == 75, stderr[-2000:]
  stopped = [ln for ln in stderr.splitlines() if ln.startswith("stopped:")]
  assert len(stopped) == 1 and "Traceback" not in stderr, stderr[-2000:]
  assert "SIGTERM" in stopped[0] and "holds no dataset" in stopped[0]
  assert not [q for q in out.rglob("*") if "incomplete" in q.name or q.name.endswith(".json")]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert data.read_info(out)["splits"] == {"train": 2000, "test": 4}
