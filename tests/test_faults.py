"""crfiqa_jax.faults: real signals to a real process become a stop request (or StopNow), a
second Ctrl-C still ends it, the previous handlers come back; a write the kernel refuses
for space (a full tmpfs, the file-size limit) leaves the file as it was and says, in one
line, which file and how many bytes."""

import errno
import os
import signal
import subprocess
import sys

import pytest

from crfiqa_jax import faults
from helpers import FULL_DISK, fill, file_size_limit, small_filesystem

# A child that enters stop_on_signal, says so, and reports what it saw after a signal.
CHILD = r"""
import os, signal, sys, time
from crfiqa_jax import faults
mode = sys.argv[1]
before = signal.getsignal(signal.SIGTERM)
try:
  with faults.stop_on_signal(at_once=mode == "at_once") as stop:
    print("ready", flush=True)
    deadline = time.time() + 60
    while not stop and time.time() < deadline:
      time.sleep(0.01)
    print("request", stop.name, round(stop.seconds(), 3) >= 0, flush=True)
    if mode == "twice":
      while True:
        time.sleep(0.01)
except faults.StopNow as e:
  print("StopNow", e, flush=True)
except KeyboardInterrupt:
  print("KeyboardInterrupt", flush=True)
print("restored", signal.getsignal(signal.SIGTERM) == before, flush=True)
"""


def _child(mode):
  return subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _signal_when_ready(p, *signums):
  assert p.stdout.readline().strip() == "ready"
  for s in signums:
    p.send_signal(s)
    if len(signums) > 1:
      line = p.stdout.readline().strip()
      if line.startswith("request"):
        continue
  out = p.communicate(timeout=60)[0]
  return out, p.returncode


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_becomes_a_request_and_the_handlers_come_back(signum):
  p = _child("flag")
  out, rc = _signal_when_ready(p, signum)
  assert rc == 0, out
  assert f"request {signal.Signals(signum).name} True" in out
  assert "restored True" in out


def test_at_once_raises_stop_now_and_a_second_ctrl_c_ends_it():
  out, rc = _signal_when_ready(_child("at_once"), signal.SIGTERM)
  assert rc == 0 and "StopNow SIGTERM" in out and "restored True" in out, out
  p = _child("twice")
  assert p.stdout.readline().strip() == "ready"
  p.send_signal(signal.SIGINT)
  assert p.stdout.readline().strip() == "request SIGINT True"
  p.send_signal(signal.SIGINT)
  out = p.communicate(timeout=60)[0]
  assert p.returncode == 0 and "KeyboardInterrupt" in out and "restored True" in out, out


def test_nested_uses_share_one_request():
  with faults.stop_on_signal() as outer:
    with faults.stop_on_signal() as inner:
      assert inner is outer and not inner
      inner.set(signal.SIGTERM)
    assert outer.name == "SIGTERM"
  with faults.stop_on_signal() as fresh:  # a new outermost use starts clean
    assert not fresh


@pytest.fixture(params=FULL_DISK)
def refusing(request, tmp_path):
  """(folder, limit context) where a file that grows past about 8 KiB is refused: a tmpfs
  filled up to 8 KiB free, or the file-size limit of this process at 8 KiB."""
  if request.param == "tmpfs":
    with small_filesystem(tmp_path / "fs", 256 * 1024) as fs:
      (fs / "out").mkdir()
      fill(fs, 8192)
      yield fs / "out", lambda: file_size_limit(1 << 62)
  else:
    (tmp_path / "out").mkdir()
    yield tmp_path / "out", lambda: file_size_limit(8192)


def test_append_is_whole_or_nothing_and_names_the_file(refusing):
  folder, limited = refusing
  path = folder / "rows.csv"
  with open(path, "ab") as f, limited():
    faults.append(f, b"a" * 4000 + b"\n", path)
    with pytest.raises(faults.DiskFull) as e:
      faults.append(f, b"b" * 20000 + b"\n", path)
  assert path.read_bytes() == b"a" * 4000 + b"\n"  # cut back to the last whole piece
  assert e.value.errno in (errno.ENOSPC, errno.EFBIG) and e.value.needed == 20001
  msg = str(e.value)
  assert str(path) in msg and "20,001 bytes" in msg and "\n" not in msg


def test_write_atomic_leaves_the_old_file_and_no_temporary(refusing):
  folder, limited = refusing
  path = folder / "model.onnx"
  path.write_bytes(b"old")
  with limited(), pytest.raises(faults.DiskFull, match="model.onnx: needs 50,000 bytes"):
    faults.write_atomic(path, b"x" * 50_000)
  assert path.read_bytes() == b"old" and os.listdir(folder) == ["model.onnx"]


def test_check_space_and_library_messages(tmp_path):
  with pytest.raises(faults.DiskFull, match="needs"):
    faults.check_space(tmp_path / "not" / "yet", 1 << 62)
  faults.check_space(tmp_path / "not" / "yet", 1)
  # tensorstore (under orbax) spells them in its messages.
  cause = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/c/4/x": Failed to '
                     "write 42449 bytes to file 13: No space left on device "
                     "[os_error_code='28']")
  try:
    raise RuntimeError("save failed") from cause
  except RuntimeError as e:
    assert faults.no_space_errno(e) == errno.ENOSPC
  assert faults.no_space_errno(ValueError("File too large [os_error_code=27]")) == errno.EFBIG
  assert faults.no_space_errno(ValueError("shape mismatch")) is None
