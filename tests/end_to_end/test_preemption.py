"""The main job under what clusters do, with the real mechanisms: SIGTERM to a training
process (one process, and one of two on loopback) and a filesystem that fills up at a
checkpoint. After a signal every process finishes its step, all stop at the same step, save
it with the data position and exit with code 75 and one `stopped:` line; rerunning the same
command ends bit-identical to an uninterrupted run. A full disk is exit code 2 and one
`error:` line naming the step folder and the bytes needed, with the previous checkpoint
untouched."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import xla_flags
from crfiqa_jax import main
from crfiqa_jax.serve import model_io
from crfiqa_jax.train.trainer import train
from helpers import (FULL_DISK, TINY, as_numpy, fill, file_size_limit, small_filesystem,
                     tiny_config)

STEPS = 24


def _command(workdir, data_dir, steps=STEPS, **extra):
  over = {**TINY, "data_dir": data_dir, "total_steps": steps, "checkpoint_every": 100, **extra}
  return [sys.executable, "-m", "crfiqa_jax.main", "--config=base", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in over.items())]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pair(workdir, data_dir):
  """Two processes × 1 device of the same command on loopback."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")
  return [subprocess.Popen(
      _command(workdir, data_dir, shard_centres="true") + [
          f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def _finish(procs, timeout=900):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise
  return [p.returncode for p in procs], outs


def _when_training(workdir, procs, steps=3):
  """Waits until `steps` steps are logged (or a process ended)."""
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if metrics.exists() and metrics.read_bytes().count(b"\n") >= steps:
      return
    time.sleep(0.01)
  raise AssertionError("the run did not start training")


def _stopped_line(out):
  lines = [ln for ln in out.splitlines() if ln.startswith("stopped:")]
  assert len(lines) == 1 and "Traceback" not in out, out[-3000:]
  return lines[0]


def _state(workdir):
  _, state, step = model_io.read_workdir(workdir)
  return step, state


def _assert_same(state, reference):
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  want = dict(jax.tree_util.tree_flatten_with_path(reference)[0])
  assert len(flat) == len(want)
  for path, got in flat:
    np.testing.assert_array_equal(got, want[path], err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def uninterrupted(tiny_records, tmp_path_factory):
  """The one-process run of STEPS steps, in this process (the subprocesses inherit its
  devices and XLA flags: the same program)."""
  wd = tmp_path_factory.mktemp("uninterrupted")
  train(tiny_config(data_dir=tiny_records, total_steps=STEPS, checkpoint_every=100), wd)
  return _state(wd)[1]


def test_sigterm_one_process_saves_and_resumes_bit_identical(tiny_records, uninterrupted,
                                                            tmp_path):
  wd = tmp_path / "wd"
  p = subprocess.Popen(_command(wd, tiny_records), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  _when_training(wd, [p])
  t0 = time.perf_counter()
  p.send_signal(signal.SIGTERM)
  (rc,), (out,) = _finish([p])
  assert rc == 75, out[-3000:]
  line = _stopped_line(out)
  steps = [int(d.name) for d in (wd / "checkpoints").iterdir() if d.name.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < STEPS, (steps, line)
  stop = steps[0]
  assert line.startswith("stopped: SIGTERM") and f"step {stop} of {STEPS}" in line
  assert time.perf_counter() - t0 < 60  # the step in hand and one save, not the whole run
  assert list(_positions(wd, stop)) == ["process_0-of-1.json"]  # the data position too
  r = subprocess.run(_command(wd, tiny_records), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  step, state = _state(wd)
  assert step == STEPS
  _assert_same(state, uninterrupted)
  logged = [json.loads(x)["step"] for x in (wd / "metrics.jsonl").read_text().splitlines()]
  assert logged == list(range(1, STEPS + 1))


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tiny_records, tmp_path):
  """Only process 1 gets the notice; both stop at the same step, each saves its data
  position, both exit with 75; a fresh pair resumes to the state of a pair never stopped."""
  ref = _pair(tmp_path / "ref", tiny_records)  # the uninterrupted pair, alongside
  _when_training(tmp_path / "ref", ref, steps=1)  # compiled: the other pairs reuse it
  wd = tmp_path / "wd"
  procs = _pair(wd, tiny_records)
  _when_training(wd, procs)
  procs[1].send_signal(signal.SIGTERM)
  codes, outs = _finish(procs)
  assert codes == [75, 75], "\n\n".join(o[-3000:] for o in outs)
  lines = [_stopped_line(o) for o in outs]
  assert lines[1].startswith("stopped: SIGTERM")
  assert lines[0].startswith("stopped: a stop request of another process")
  stops = {int(ln.split("stopped at step ")[1].split()[0]) for ln in lines}
  assert len(stops) == 1
  stop = stops.pop()
  assert 3 <= stop < STEPS
  positions = sorted(p.name for p in (wd / "checkpoints" / str(stop) / "data").glob("process_*"))
  assert positions == ["process_0-of-2.json", "process_1-of-2.json"]
  codes, outs = _finish(_pair(wd, tiny_records))
  assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outs)
  codes, outs = _finish(ref)
  assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outs)
  (s1, got), (s2, want) = _state(wd), _state(tmp_path / "ref")
  assert s1 == s2 == STEPS
  _assert_same(got, want)
  # Having read the same batches: the same data positions at the end.
  assert _positions(wd, STEPS) == _positions(tmp_path / "ref", STEPS) != _positions(wd, stop)


def _positions(workdir, step):
  """The grain iterator state each process saved in checkpoint `step`."""
  return {f.name: json.loads(f.read_text())
          for f in sorted((workdir / "checkpoints" / str(step) / "data").glob("process_*"))}


@pytest.fixture(scope="module")
def straight4(tiny_records, tmp_path_factory):
  """The parameters of an uninterrupted 4-step run."""
  wd = tmp_path_factory.mktemp("straight4")
  return as_numpy(train(tiny_config(data_dir=tiny_records, total_steps=4), wd).params)


@pytest.mark.parametrize("how", FULL_DISK)
def test_full_disk_at_a_checkpoint_keeps_the_previous_one(tiny_records, straight4, tmp_path,
                                                          capsys, how):
  """Step 2 is saved; the disk then fills (a tmpfs with 256 KiB left: refused before the
  write; or this process's file-size limit: refused while writing). The same command to step
  4 stops with one error line naming checkpoints/4 and the bytes it needs; step 2 is
  untouched; once there is room the same command ends where an uninterrupted run ends."""
  with contextlib.ExitStack() as stack:
    base = (stack.enter_context(small_filesystem(tmp_path / "fs", 8 << 20)) if how == "tmpfs"
            else tmp_path)
    wd = base / "wd"
    argv = _command(wd, tiny_records, steps=4, checkpoint_every=2)[3:]
    train(tiny_config(data_dir=tiny_records, total_steps=2, checkpoint_every=2), wd)
    step2 = {p.relative_to(wd): p.read_bytes() for p in (wd / "checkpoints" / "2").rglob("*")
             if p.is_file()}
    capsys.readouterr()
    if how == "tmpfs":
      filler, limited = fill(base, 256 * 1024), contextlib.nullcontext()
    else:
      filler, limited = None, file_size_limit(200 * 1024)
    with limited:
      rc = main.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert str(wd / "checkpoints" / "4") in errors[0] and "needs" in errors[0]
    assert {p.relative_to(wd): p.read_bytes() for p in (wd / "checkpoints" / "2").rglob("*")
            if p.is_file()} == step2  # step 2 as it was
    assert not (wd / "checkpoints" / "4").exists()  # no step 4 that could pass for one
    if filler is not None:
      filler.unlink()
    assert main.main(argv) == 0
    step, state = _state(wd)
    assert step == 4 and sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2", "4"]
    _assert_same(state["params"], straight4)
    logged = [json.loads(x)["step"] for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]
