"""What every command line shares: a parser whose --help ends with an example, quiet
logging (our progress at INFO, the libraries' chatter from WARNING), and one mapping from
the errors a user can fix to `error: ...` on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
from typing import Callable

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


def parser(prog: str, doc: str, example: str) -> argparse.ArgumentParser:
  """`doc`'s first paragraph as the description; `example` shown at the end of --help."""
  return argparse.ArgumentParser(
      prog=f"python -m {prog}", description=doc.strip().split("\n\n")[0],
      epilog="example:\n  " + example.strip().replace("\n", "\n  "),
      formatter_class=argparse.RawDescriptionHelpFormatter)


def quiet_logging(level: int = logging.INFO):
  """Our loggers at `level`; absl, orbax, grain, tfds and jax only from WARNING."""
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  logging.getLogger("crfiqa_jax").setLevel(level)
  for name in ("absl", "orbax", "grain", "tensorflow_datasets", "jax", "etils"):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:  # absl is a dependency; this only guards odd environments
    pass


def run(fn: Callable[[], int | None]) -> int:
  """Runs a CLI body; a user error becomes one `error: ...` line and exit code 2."""
  try:
    rc = fn()
  except USER_ERRORS as e:
    logging.getLogger("crfiqa_jax").debug("traceback", exc_info=True)
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {msg}", file=sys.stderr)
    return 2
  return 0 if rc is None else int(rc)
