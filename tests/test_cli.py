"""The command-line contract (crfiqa_jax.cli): a broken input of every kind exits 2 with one
`error: ...` line on stderr that names the file or the --config.key to change, and no
traceback. The real entry points run (main(argv), or `python -m` where start-up matters)."""

import errno
import importlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import cli, faults, main
from crfiqa_jax.__main__ import COMMANDS
from crfiqa_jax.evaluation import evaluate
from crfiqa_jax.serve import calibration
from crfiqa_jax.serve import convert
from crfiqa_jax.serve import export
from crfiqa_jax.serve import score
from crfiqa_jax.train import plan


def one_error_line(capsys, *names):
  err = capsys.readouterr().err
  lines = [ln for ln in err.splitlines() if "error:" in ln]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err, err
  for name in names:
    assert str(name) in lines[0], (name, lines[0])
  return lines[0]


@pytest.fixture
def faces_dir(tmp_path):
  d = tmp_path / "faces"
  d.mkdir()
  Image.fromarray(np.full((112, 112, 3), 90, np.uint8)).save(d / "a.png")
  return d


def run_score(tmp_path, checkpoint, faces_dir):
  return score.main([f"--checkpoint={checkpoint}", f"--input={faces_dir}",
                     f"--output={tmp_path / 'q.csv'}"])


@pytest.fixture
def cut_pth(tmp_path):
  """A released-layout .pth cut in half (a PyTorch zip archive without its directory)."""
  torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
  path = tmp_path / "whole.pth"
  torch.save({"conv1.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(4, 9)}, path)
  data = path.read_bytes()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(data[:len(data) // 2])
  return cut


def test_truncated_pth_with_torch(tmp_path, cut_pth, faces_dir, capsys):
  assert run_score(tmp_path, cut_pth, faces_dir) == 2
  one_error_line(capsys, cut_pth)
  assert convert.main([f"--torch={cut_pth}", f"--out={tmp_path / 'o'}"]) == 2
  one_error_line(capsys, cut_pth)


def test_truncated_pth_without_torch(tmp_path, cut_pth, faces_dir, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails: the own reader
  assert run_score(tmp_path, cut_pth, faces_dir) == 2
  one_error_line(capsys, cut_pth)
  assert export.main([f"--checkpoint={cut_pth}", "--format=stablehlo",
                      f"--output={tmp_path / 'm.shlo'}"]) == 2
  one_error_line(capsys, cut_pth)


def test_random_bytes_onnx(tmp_path, faces_dir, capsys):
  bad = tmp_path / "bad.onnx"
  bad.write_bytes(np.random.default_rng(0).bytes(4096))
  assert run_score(tmp_path, bad, faces_dir) == 2
  one_error_line(capsys, bad)


def test_broken_model_directories(tmp_path, faces_dir, capsys):
  workdir = tmp_path / "wd"  # a training workdir that never saved a step
  workdir.mkdir()
  (workdir / "config.json").write_text("{}")
  assert run_score(tmp_path, workdir, faces_dir) == 2
  one_error_line(capsys, workdir, "no checkpoint")
  exported = tmp_path / "exported"
  exported.mkdir()
  (exported / "model.json").write_text("{not json")
  assert run_score(tmp_path, exported, faces_dir) == 2
  one_error_line(capsys)


def test_empty_folder(tmp_path, faces_dir, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert run_score(tmp_path, empty, faces_dir) == 2  # as a model
  one_error_line(capsys, empty)
  assert score.main([f"--checkpoint={empty}", f"--input={empty}",
                     f"--output={tmp_path / 'q.csv'}"]) == 2  # as the images
  one_error_line(capsys, empty)
  assert main.main(["--config=small", f"--workdir={tmp_path / 'w'}",
                    f"--config.data_dir={empty}"]) == 2  # as the training data
  one_error_line(capsys, "--config.data_dir", empty)


def test_unknown_config_and_bad_overrides(tmp_path, capsys):
  assert main.main(["--config=nonexistent", f"--workdir={tmp_path}"]) == 2
  one_error_line(capsys, "nonexistent")
  assert main.main(["--config=demo", f"--workdir={tmp_path}", "--config.lr=abc"]) == 2
  one_error_line(capsys, "--config.lr")
  assert main.main(["--config=demo", f"--workdir={tmp_path}", "--config.lrate=0.1"]) == 2
  one_error_line(capsys, "lrate")
  assert plan.main(["--config=demo", "--topology=v5e:2x2", "--config.lr=abc"]) == 2
  one_error_line(capsys, "--config.lr")
  with pytest.raises(SystemExit) as e:  # a missing flag: argparse's error, in one line
    main.main(["--config=demo"])
  assert e.value.code == 2
  one_error_line(capsys, "--workdir")


def test_train_only_eval_data_dir_names_the_key(tmp_path, tiny_records, capsys):
  assert main.main(["--config=small", f"--workdir={tmp_path / 'w'}",
                    f"--config.data_dir={tiny_records}",
                    f"--config.eval_data_dir={tiny_records}"]) == 2
  one_error_line(capsys, "--config.eval_data_dir", "no 'test' split")
  assert not (tmp_path / "w" / "checkpoints").exists()  # stopped before training


def test_other_commands_keep_the_contract(tmp_path, faces_dir, capsys):
  assert calibration.main([f"--checkpoint={tmp_path / 'none'}",
                           f"--reference={tmp_path / 'r.csv'}"]) == 2
  one_error_line(capsys, "--checkpoint")
  (tmp_path / "q.csv").write_text("path,quality\nx.png,1\n")
  assert evaluate.main([f"--benchmark={tmp_path / 'none'}", f"--quality={tmp_path / 'q.csv'}",
                        "--fr=dlib", f"--out={tmp_path / 'o'}"]) == 2
  one_error_line(capsys)


def test_module_entry_point_exit_code_and_one_line(tmp_path):
  """`python -m` itself: no traceback and no library chatter around the error."""
  r = subprocess.run([sys.executable, "-m", "crfiqa_jax.main", "--config=demo",
                      f"--workdir={tmp_path}", "--config.lr=abc"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines() == [
      "error: --config.lr='abc' is not a valid float"], r.stderr
  assert r.stdout == ""


def test_every_command_lists_the_exit_codes_in_its_help(capsys):
  for name, entry in COMMANDS.items():
    with pytest.raises(SystemExit) as e:
      importlib.import_module(f"crfiqa_jax.{entry}").main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for code in ("0", "1", "2", "3", "75", "130"):
      assert f"\n  {code:<4} " in out, (name, code, out[-800:])
    assert "docs/faults.md" in out


def test_each_fault_has_its_code_and_one_line(capsys):
  def raises(e):
    def body():
      raise e
    return body

  cases = [(cli.Stopped("SIGTERM: stopped at step 6 of 40; saved"), 75, "stopped: SIGTERM"),
           (cli.Diverged("non-finite loss=nan at step 7"), 3, "error: non-finite loss=nan"),
           (faults.DiskFull("/data/q.csv", 1234), 2, "error: no space left on the device of "
                                                    "/data/q.csv: needs 1,234 bytes"),
           (OSError(errno.ENOSPC, "No space left on device", "/d/x"), 2, "error: "),
           (KeyboardInterrupt(), 130, "interrupted: ")]
  for exc, code, start in cases:
    assert cli.run(raises(exc)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(start), (exc, err)
  with pytest.raises(OSError):  # not a fault of space: a bug, with its traceback
    cli.run(raises(OSError(errno.EIO, "I/O error")))
