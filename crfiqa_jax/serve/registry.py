"""The released CR-FIQA models by name: `--checkpoint=cr-fiqa-s` and `--checkpoint=cr-fiqa-l`.

Each released model is known by its official file name, architecture, byte size, SHA-256,
licence and download page (`MODELS`; docs/models.md shows the table). Nothing downloads:
the file is looked for in one folder, `home()` ($CRFIQA_JAX_HOME, else ~/.cache/crfiqa_jax).

  `lookup(spec)`     the Released entry a --checkpoint value names, or None (a path)
  `locate(model)`    (the file, its SHA-256): an absent file is a FileNotFoundError whose one
                     line names the file, where to get it and where to put it; a file of
                     other bytes than the release gives a warning with both hashes, and is
                     used; the licence is printed once, on the first use of each model
  `converted_dir`    where the one-time conversion of a file is kept, keyed by its SHA-256
  `sha256(path)`     the file's SHA-256, remembered by (path, size, mtime) so later uses skip
                     reading hundreds of megabytes

crfiqa_jax.serve.model_io turns a name into that converted directory (`model_io.resolve`),
so every command and `Scorer.from_checkpoint` take the names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

HOME_ENV = "CRFIQA_JAX_HOME"
LICENCE = "CC BY-NC 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by-nc/4.0/"
SOURCE = "https://github.com/fdbtrs/CR-FIQA"  # its README's "Pretrained model" section


@dataclasses.dataclass(frozen=True)
class Released:
  """One released model: `name` on the command line, the paper's `title`, the official
  `filename`, its `arch`, `size` in bytes, `sha256`, `licence` and download `url`."""

  name: str
  title: str
  filename: str
  arch: str
  size: int
  sha256: str
  url: str
  licence: str = LICENCE


MODELS = {m.name: m for m in (
    Released("cr-fiqa-s", "CR-FIQA(S)", "32572backbone.pth", "iresnet50", 174_679_421,
             "b9f457a6f00e0363a0cfb47ba4075e866d29e4e03c7989afe84faa61054dc8d4",
             "https://drive.google.com/drive/folders/13bE4LP303XA_IzL1YOgG5eN0c8efHU9h"),
    Released("cr-fiqa-l", "CR-FIQA(L)", "181952backbone.pth", "iresnet100", 261_219_071,
             "5fca24736e4f8df5fbfc0f31ca533fbcca5eb119e2bad8fff751fe72c4c4d0fd",
             "https://drive.google.com/drive/folders/1siy_3eQSBuIV6U6_9wgGtbZG2GMgVLMy"),
)}

HELP = (f"or a released model by name: {', '.join(MODELS)} (its weights are under {LICENCE}: "
        "non-commercial use only; the file goes in $CRFIQA_JAX_HOME, docs/models.md)")


def home() -> Path:
  """The folder of the released files and their conversions: $CRFIQA_JAX_HOME, else
  ~/.cache/crfiqa_jax."""
  env = os.environ.get(HOME_ENV)
  return Path(env).expanduser() if env else Path.home() / ".cache" / "crfiqa_jax"


def lookup(spec) -> Released | None:
  """The released model `spec` names (case-insensitive), or None. An existing file or folder
  of that name wins: a path is always a path."""
  if not isinstance(spec, (str, os.PathLike)):
    return None
  model = MODELS.get(str(spec).strip().lower())
  if model is None or Path(spec).exists():
    return None
  return model


def missing_message(model: Released) -> str:
  """The one line for an absent file: which file, where to get it, where to put it."""
  return (f"{model.name} needs {model.filename} ({model.title}, {model.arch}, "
          f"{model.size:,} bytes), which is not in {home()}: download it from {model.url} "
          f"(the {SOURCE} README, \"Pretrained model\") and put it in {home()}, or set "
          f"${HOME_ENV} to the folder that holds it")


def _hash_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
  """Other processes see the old file or the new one, never half of one."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


HASHES_FILE = "sha256.json"  # in home(): {absolute path: [size, mtime_ns, sha256]}


def sha256(path) -> str:
  """The SHA-256 of a file, remembered in home()/HASHES_FILE by (path, size, mtime_ns): a
  changed file is hashed again. A cache that cannot be read or written is only skipped."""
  path = Path(path).absolute()
  st = path.stat()
  cache_file = home() / HASHES_FILE
  try:
    cache = json.loads(cache_file.read_text())
    if not isinstance(cache, dict):
      cache = {}
  except (OSError, ValueError):
    cache = {}
  hit = cache.get(str(path))
  if isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns] and len(hit) == 3:
    return str(hit[2])
  digest = _hash_file(path)
  cache[str(path)] = [st.st_size, st.st_mtime_ns, digest]
  try:
    _atomic_write_text(cache_file, json.dumps(cache, indent=1))
  except OSError as e:
    log.debug("SHA-256 not cached (%s)", e)
  return digest


def licence_notice(model: Released) -> str:
  return (f"{model.title} ({model.name}, {model.filename}) by Boutros et al. ({SOURCE}) is "
          f"licensed under {model.licence} ({LICENCE_URL}): non-commercial use only, with "
          "attribution. Cite CR-FIQA (CVPR 2023) when you use it.")


def _notice_once(model: Released) -> None:
  """The licence on stderr on the first use of `model` (a marker in home() remembers)."""
  marker = home() / f".{model.name}.licence-shown"
  if marker.exists():
    return
  print(f"note: {licence_notice(model)}", file=sys.stderr, flush=True)
  try:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
  except OSError as e:
    log.debug("licence marker not written (%s)", e)


_warned: set[tuple[str, str]] = set()  # (file, SHA-256) already warned about in this process


def locate(model: Released) -> tuple[Path, str]:
  """(the released file in home(), its SHA-256); see the module docstring."""
  path = home() / model.filename
  if not path.is_file():
    raise FileNotFoundError(missing_message(model))
  digest = sha256(path)
  if digest != model.sha256 and (str(path), digest) not in _warned:
    _warned.add((str(path), digest))
    log.warning("%s has other bytes than the released %s: SHA-256 %s, released %s; "
                "going on with this file", path, model.title, digest, model.sha256)
  _notice_once(model)
  return path, digest


def converted_dir(digest: str) -> Path:
  """Where the exported Flax model converted from the file with SHA-256 `digest` is kept."""
  return home() / "converted" / digest
