"""What every command line (`python -m crfiqa_jax.*`) shares: a parser whose --help ends
with an example, quiet logging (our progress at INFO, the libraries' chatter from WARNING),
and one exit-code contract:

  0  all went well;
  1  some inputs failed (each named on stderr) and the rest were done;
  2  a usage, config or data error: exactly one `error: ...` line on stderr naming the file
     or the flag / --config.key to change, and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from typing import Callable, NoReturn

import jax
from absl import logging as absl_logging

import crfiqa_jax  # the root package: __version__ only (it imports nothing else eagerly)


class MissingExtra(ImportError, ValueError):
  """An optional extra is not installed; the message names the pip command. A ValueError
  too, so `run` reports it as one `error: ...` line."""

  def __init__(self, extra: str, what: str = "this"):
    super().__init__(f'{what} needs the [{extra}] extra: pip install "crfiqa_jax[{extra}]"')


def optional_import(module: str, extra: str, what: str = "this"):
  """`import module`, or MissingExtra naming the extra that brings it."""
  try:
    __import__(module)
  except ImportError:
    raise MissingExtra(extra, what) from None
  return sys.modules[module]


# Errors that mean "the input or the request is wrong", not "the program is broken".
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError,
               pickle.UnpicklingError, NotADirectoryError, IsADirectoryError)


def version() -> str:
  """What `--version` prints: "crfiqa_jax X.Y.Z"."""
  return f"crfiqa_jax {crfiqa_jax.__version__}"


class ArgumentParser(argparse.ArgumentParser):
  """argparse, with `--version` on every parser (subcommands' too) and a usage error
  reported as one `error: ...` line and exit code 2."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument("--version", action="version", version=version(),
                      help="print the package's version and exit")

  def error(self, message):
    fail(f"{message} (see {self.prog} --help)")


def report(message) -> int:
  """Prints `message` as one `error: ...` line on stderr; returns the exit code 2."""
  lines = [ln.strip() for ln in str(message).strip().splitlines() if ln.strip()]
  print(f"error: {' '.join(lines)}", file=sys.stderr, flush=True)
  return 2


def fail(message) -> NoReturn:
  """One `error: ...` line on stderr, then exit code 2."""
  raise SystemExit(report(message))


_prog_override: str | None = None


def set_prog(name: str):
  """The program name --help and usage errors show (the `crfiqa` console script sets
  "crfiqa SUBCOMMAND"; by default it is "python -m MODULE")."""
  global _prog_override
  _prog_override = name


def prog(module: str) -> str:
  return _prog_override or f"python -m {module}"


def parser(module: str, doc: str, example: str) -> ArgumentParser:
  """A parser for `python -m module`: `doc`'s first paragraph as the description; `example`
  shown at the end of --help."""
  return ArgumentParser(
      prog=prog(module), description=doc.strip().split("\n\n")[0],
      epilog="example:\n  " + example.strip().replace("\n", "\n  "),
      formatter_class=argparse.RawDescriptionHelpFormatter)


def add_process_flags(p: argparse.ArgumentParser):
  """The flags of a run on several processes (jax.distributed): see `init_processes`."""
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() (TPU pods, SLURM, or with --coordinator)")
  p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process)")
  p.add_argument("--num_processes", type=int, default=None, help="number of processes")
  p.add_argument("--process_id", type=int, default=None, help="this process's index")


def init_processes(args):
  """jax.distributed.initialize() when the flags of `add_process_flags` ask for it; before
  any jax computation."""
  if args.distributed or args.coordinator:
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)


def quiet_logging(level: int = logging.INFO):
  """Our loggers at `level`; absl, orbax, grain, tfds and jax only from WARNING."""
  fmt = "%(levelname)s %(message)s"
  logging.basicConfig(level=logging.WARNING, format=fmt)
  # A library may have configured the root logger on import (a module-level logging call
  # does), so basicConfig did nothing: give its plain stderr handler our format.
  for handler in logging.getLogger().handlers:
    if type(handler) is logging.StreamHandler:
      handler.setFormatter(logging.Formatter(fmt))
  logging.getLogger("crfiqa_jax").setLevel(level)
  for name in ("absl", "orbax", "grain", "tensorflow_datasets", "jax", "etils"):
    logging.getLogger(name).setLevel(logging.WARNING)
  absl_logging.set_verbosity(absl_logging.WARNING)


def run(fn: Callable[[], int | None]) -> int:
  """Runs a CLI body: its return value (None = 0) is the exit code; a user error becomes
  one `error: ...` line and exit code 2."""
  try:
    rc = fn()
  except USER_ERRORS as e:
    logging.getLogger("crfiqa_jax").debug("traceback", exc_info=True)
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return report(msg)
  return 0 if rc is None else int(rc)
