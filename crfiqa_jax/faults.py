"""What clusters do to a job, as every command meets it: a request to stop, and a write that
finds no space. Shared ground: imports nothing of the package.

Stop requests. A scheduler's preemption notice is SIGTERM (Kubernetes, spot and preemptible
VMs, SLURM before its kill), a terminal's Ctrl-C is SIGINT. Inside `stop_on_signal()` the
first of them is recorded instead of ending the process:

    with faults.stop_on_signal() as stop:
      for batch in work:
        ...                      # finish the batch in hand
        if stop:                 # then stop at this safe point
          break

`stop_on_signal(at_once=True)` raises `StopNow` in the main thread instead, for work that is
all-or-nothing (a conversion, a report) and is better abandoned at once. A second SIGINT
always ends the process (KeyboardInterrupt), so a person at a terminal is never stuck.

No space. `DiskFull` is the OSError every write of the package raises when the disk, a quota
or the file-size limit refuses it: its message names the path, the bytes the write needed
and the bytes free, in one line. `append` writes a piece of a file whole or not at all, so a
CSV or a metrics file never ends in a torn line; `check_space` refuses a write that cannot
fit before it starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# errno values meaning "this write does not fit": a full disk, a quota, the file-size limit.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class StopNow(BaseException):
  """Raised in the main thread by a stop signal under `stop_on_signal(at_once=True)`. A
  BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


class StopRequest:
  """The first stop signal this process received while a `stop_on_signal` was active.

  True once a signal came; `name` ("SIGTERM"), `seconds()` since it came. `set(signum)`
  records one by hand (another process's request, learnt at a sync point)."""

  def __init__(self):
    self.signum: int | None = None
    self.at: float | None = None

  def __bool__(self) -> bool:
    return self.signum is not None

  def set(self, signum: int = signal.SIGTERM) -> None:
    if self.signum is None:
      self.signum, self.at = int(signum), time.monotonic()

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else ""

  def seconds(self) -> float:
    """Seconds since the request (0 when there is none)."""
    return time.monotonic() - self.at if self.at is not None else 0.0


_request = StopRequest()
_state = {"depth": 0, "at_once": False, "previous": {}}


def _handle(signum, frame):
  if _request and signum == signal.SIGINT:
    raise KeyboardInterrupt  # a second Ctrl-C: end now
  _request.set(signum)
  if _state["at_once"]:
    raise StopNow(signum)


@contextlib.contextmanager
def stop_on_signal(*, at_once: bool = False) -> Iterator[StopRequest]:
  """Within: SIGTERM and SIGINT are recorded in the StopRequest it yields (with `at_once`
  they also raise StopNow, at once or, for a request already recorded, on entry). Nested
  uses share the outermost's request; the handlers from before the outermost come back
  after it. Signal handlers live in the main thread only: elsewhere the request is yielded
  but no signal sets it. Enter it after jax.distributed.initialize, whose own SIGTERM
  notifier would otherwise take the signal."""
  outer = _state["depth"] == 0
  if outer:
    _request.signum = _request.at = None
    if threading.current_thread() is threading.main_thread():
      _state["previous"] = {s: signal.signal(s, _handle) for s in STOP_SIGNALS}
  mode = _state["at_once"]
  _state["depth"] += 1
  _state["at_once"] = at_once
  try:
    if at_once and _request:
      raise StopNow(_request.signum)
    yield _request
  finally:
    _state["depth"] -= 1
    _state["at_once"] = mode
    if outer:
      for s, h in _state["previous"].items():
        signal.signal(s, signal.SIG_DFL if h is None else h)
      _state["previous"] = {}


def current() -> StopRequest:
  """The process's stop request (never set outside `stop_on_signal`)."""
  return _request


# ---------------------------------------------------------------------------------------
# No space.
# ---------------------------------------------------------------------------------------

def free_bytes(path) -> int | None:
  """Bytes free to this user on the filesystem of `path` (its nearest existing parent)."""
  p = Path(path).absolute()
  while not p.exists() and p != p.parent:
    p = p.parent
  try:
    return shutil.disk_usage(p).free
  except OSError:
    return None


class DiskFull(OSError):
  """A write that does not fit: `filename` (the path), `needed` (bytes the write needed),
  `free` (bytes free when it failed). errno is ENOSPC, EDQUOT or EFBIG as the system said."""

  def __init__(self, path, needed: int | None, *, code: int = errno.ENOSPC):
    super().__init__(code, os.strerror(code))
    self.filename = str(path)
    self.needed = needed
    self.free = free_bytes(path)

  def __str__(self) -> str:
    need = f"needs {self.needed:,} bytes" if self.needed is not None else "needs more space"
    if self.errno == errno.EFBIG:
      limit = _file_size_limit()
      return (f"the file-size limit (ulimit -f{f', {limit:,} bytes' if limit else ''}) "
              f"refused a write to {self.filename}: {need}")
    free = f", {self.free:,} free" if self.free is not None else ""
    why = "the disk quota is used up" if self.errno == errno.EDQUOT else "no space left"
    return f"{why} on the device of {self.filename}: {need}{free}"


def _file_size_limit() -> int | None:
  soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
  return None if soft == resource.RLIM_INFINITY else soft


# How libraries that do not raise OSError (tensorstore under orbax, TFDS's writers) spell the
# same errors in their messages.
_NO_SPACE_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|"
                            r"os_error_code='?(?:28|122|27)\b")


def mentions_no_space(text: str) -> bool:
  """Whether a library's error text is about a full disk, a quota or the file-size limit."""
  return _NO_SPACE_TEXT.search(text) is not None


def no_space_errno(e: BaseException) -> int | None:
  """The NO_SPACE errno `e` (or what it was raised from) stands for, else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in NO_SPACE:
      return e.errno
    m = _NO_SPACE_TEXT.search(str(e))
    if m:
      text = m.group(0)
      if "quota" in text or "122" in text:
        return errno.EDQUOT
      return errno.EFBIG if ("large" in text or "27" in text) else errno.ENOSPC
    e = e.__cause__ or e.__context__
  return None


def check_space(path, needed: int) -> None:
  """DiskFull before writing `needed` bytes at `path` (which need not exist yet) when its
  filesystem has fewer free."""
  free = free_bytes(path)
  if free is not None and free < needed:
    raise DiskFull(path, needed)


def append(f: BinaryIO, data: bytes, path=None) -> None:
  """Writes `data` at the end of the open file `f` whole or not at all: when the system
  refuses part of it (full disk, quota, file-size limit) the file is cut back to its length
  before the call and DiskFull names `path` and len(data). Writes through the descriptor,
  after flushing what `f` buffered."""
  f.flush()
  fd = f.fileno()
  start = os.lseek(fd, 0, os.SEEK_END)
  view, done = memoryview(data), 0
  try:
    while done < len(view):
      done += os.write(fd, view[done:])
  except OSError as e:
    if e.errno not in NO_SPACE:
      raise
    os.ftruncate(fd, start)
    raise DiskFull(path or getattr(f, "name", "?"), len(data), code=e.errno) from None


def write_atomic(path, data: bytes) -> None:
  """Writes the file `path` whole: readers (other processes) see the old file or the new
  one, never a part of it; when the write is refused for space the temporary file goes and
  DiskFull names `path` and len(data)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      append(f, data, path)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
