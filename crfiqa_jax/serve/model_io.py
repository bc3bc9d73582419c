"""Model I/O: every kind of model path, read and written, in one place.

  "workdir"   a training workdir: WORKDIR/config.json (the run's config, written by the
              trainer) and WORKDIR/checkpoints/ (orbax steps of the train state and data
              position; crfiqa_jax.train.checkpoint writes them);
  "exported"  an exported Flax model: DIR/model.json (arch, embedding_dim, image_size,
              source) and DIR/variables/ (orbax), written by `save_exported`
              (`python -m crfiqa_jax.convert`);
  "torch"     a released PyTorch state_dict, FILE.pth or FILE.pt (crfiqa_jax.serve.torch_import);
  "onnx"      FILE.onnx written by `python -m crfiqa_jax.export`, run by onnxruntime;
  "released"  a released model by name, `cr-fiqa-s` or `cr-fiqa-l` (crfiqa_jax.serve.registry):
              `resolve` converts its file once into an exported directory kept under the
              file's SHA-256, and every later use reads that directory.

`model_kind(path)` names the kind; `resolve(path)` turns a name into its exported directory
(any other path stays as it is); `load_model` gives (Flax model, variables, info) for all
but .onnx; crfiqa_jax.serve.engines.load_predictor runs any of them.

A workdir's newest checkpoint step may be damaged (a copy cut short, a lost node, a full
disk): `newest_readable` tries the steps newest first and warns in one line for each step
it cannot read; `read_workdir` (scoring) and crfiqa_jax.train.checkpoint (resuming) both
read through it, so both fall back to the newest readable step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from crfiqa_jax import models, sharding
from crfiqa_jax.serve import registry, torch_import

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"        # a workdir's config
CHECKPOINTS_DIR = "checkpoints"    # a workdir's orbax steps
MODEL_FILE = "model.json"          # an exported directory: arch, embedding_dim, image_size, source
VARIABLES_DIR = "variables"        # an exported directory: the Flax variables (orbax)
TORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIX = ".onnx"
KINDS_TEXT = (f"a training workdir ({CONFIG_FILE} + {CHECKPOINTS_DIR}/), an exported model "
              f"directory ({MODEL_FILE}), a released PyTorch .pth/.pt, an .onnx file or a "
              f"released model's name ({', '.join(registry.MODELS)})")


def model_kind(path) -> str | None:
  """The kind of `path`: "workdir", "exported", "torch", "onnx", "released" (a released
  model's name), or None (none of these)."""
  if registry.lookup(path) is not None:
    return "released"
  p = Path(path)
  if p.suffix.lower() in TORCH_SUFFIXES:
    return "torch"
  if p.suffix.lower() == ONNX_SUFFIX:
    return "onnx"
  if (p / MODEL_FILE).is_file():
    return "exported"
  if (p / CONFIG_FILE).is_file():
    return "workdir"
  return None


def first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


def kind_of_existing(path) -> str:
  """model_kind of a path that must exist; a FileNotFoundError listing the kinds if not (for
  a released model's name: naming its file, where to get it and where to put it)."""
  released = registry.lookup(path)
  if released is not None:
    registry.locate(released)
    return "released"
  path = Path(path)
  kind = model_kind(path)
  if kind is None or (kind in ("torch", "onnx") and not path.is_file()):
    what = "does not exist" if not path.exists() else "is not a model"
    raise FileNotFoundError(f"{path} {what}: expected {KINDS_TEXT}")
  return kind


def resolve(path) -> Path:
  """The model path `path` stands for: a released model's name → its exported directory
  (converted from the file on first use, then reused: registry.converted_dir); any other
  path as it is."""
  released = registry.lookup(path)
  if released is None:
    return Path(path)
  pth, digest = registry.locate(released)
  out = registry.converted_dir(digest)
  if (out / MODEL_FILE).is_file():
    return out
  log.info("%s: converting %s once into %s", released.name, pth, out)
  variables, info = torch_import.load_torch(pth, released.arch)
  tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  save_exported(tmp, variables, arch=info["arch"], embedding_dim=info["embedding_dim"],
                source=f"{released.name}: {pth.name}, SHA-256 {digest}")
  try:
    os.replace(tmp, out)  # atomic; another process that got there first keeps its copy
  except OSError:
    if not (out / MODEL_FILE).is_file():
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def load_model(path, arch: str | None = None, *, qs_optional: bool = False):
  """(model, variables, info) of a workdir, an exported directory or a .pth file (`arch`
  names its architecture, else it is detected from the block counts).

  info: arch, embedding_dim, image_size, source, has_qs (False for a .pth ArcFace backbone
  read with qs_optional), and for a workdir its config `config`, `step` and class centres
  `centres` [D, C'] (C' is padded to the device count when class sharding was on).
  """
  path = resolve(path).absolute()
  kind = kind_of_existing(path)
  if kind == "onnx":
    raise ValueError(f"{path} is an ONNX file: it runs in onnxruntime (score, evaluate, "
                     "ijbc take it) but has no Flax variables; use the workdir, exported "
                     "directory or .pth it was exported from")
  if kind == "torch":
    variables, info = torch_import.load_torch(path, arch, qs_optional=qs_optional)
  elif kind == "exported":
    variables, info = read_exported(path)
  else:
    cfg, state, step = read_workdir(path)
    variables = inference_variables(state)
    info = {"arch": cfg["model"], "embedding_dim": cfg["embedding_dim"],
            "image_size": cfg["image_size"], "source": f"{path} step {step}",
            "step": int(step), "config": cfg, "centres": state["params"]["centres"]}
  return models.create_model(info["arch"], embedding_dim=info["embedding_dim"]), variables, info


def inference_variables(state) -> dict:
  """{"params", "batch_stats"} of a TrainState (or of a raw restored state dict)."""
  if isinstance(state, dict):
    return {"params": state["params"]["backbone"], "batch_stats": state["batch_stats"]}
  return {"params": state.params["backbone"], "batch_stats": state.batch_stats}


def save_exported(out_dir: str | Path, variables: dict, *, arch: str, embedding_dim: int,
                  image_size: int = 112, source: str = "") -> Path:
  """Writes an exported model directory: MODEL_FILE and VARIABLES_DIR."""
  out = Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  if (out / VARIABLES_DIR).exists():
    raise FileExistsError(f"{out}/{VARIABLES_DIR} exists; choose an empty --out")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / VARIABLES_DIR, variables)
  (out / MODEL_FILE).write_text(json.dumps(
      {"arch": arch, "embedding_dim": embedding_dim, "image_size": image_size,
       "source": source}, indent=1))
  return out


def read_info(path) -> dict:
  """The info of an exported model directory (arch, embedding_dim, image_size, source)."""
  return json.loads((Path(path) / MODEL_FILE).read_text())


def files_fingerprint(folder, skip: tuple[str, ...] = ()) -> str:
  """A hash of the files under `folder` as they are on disk: each one's relative path, size,
  modification time and inode (not its bytes); files under the top-level folders `skip`
  are left out. Rewriting or replacing any file changes it."""
  h = hashlib.blake2b(digest_size=16)
  folder = Path(folder)
  for f in sorted(folder.rglob("*")):
    rel = f.relative_to(folder)
    if f.is_file() and rel.parts[0] not in skip:
      st = f.stat()
      h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())
  return h.hexdigest()


def read_exported(path) -> tuple[dict, dict]:
  """(variables, info) of an exported model directory."""
  path = Path(path)
  info = read_info(path)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(path / VARIABLES_DIR)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path / VARIABLES_DIR} cannot be read: {first_line(e)}") from e
  return variables, info


class CheckpointMismatch(ValueError):
  """A readable checkpoint that holds another model or config than the one asked for (every
  step would fail alike, so nothing falls back)."""


def damage_reason(e: BaseException) -> str:
  """One line saying why a checkpoint step could not be read: the innermost error of the
  chain (tensorstore's own words, e.g. "Requested byte range ... is not valid"), without
  the database path."""
  inner = e
  while inner.__cause__ is not None or (inner.__context__ is not None
                                        and not inner.__suppress_context__):
    inner = inner.__cause__ or inner.__context__
  text = first_line(inner) if str(inner).strip() else type(inner).__name__
  return re.sub(r' in OCDBT database at local file "[^"]*"', "", text)[:240]


def newest_readable(mgr: ocp.CheckpointManager, read: Callable[[int], Any], *,
                    all_processes: bool = False) -> tuple[int, Any, list[tuple[int, str]]]:
  """(step, read(step), damaged) for the newest step of `mgr` that `read` reads without an
  error, trying the steps newest first; `damaged` lists the newer steps that failed as
  (step, reason) for the caller to warn about. CheckpointMismatch is raised at once;
  ValueError names every step when none can be read (FileNotFoundError when there are
  none). With `all_processes` every process of a multi-process run must read a step for it
  to count (they agree through one all-gather per step tried)."""
  steps = sorted(mgr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"{mgr.directory} holds no checkpoint yet")
  damaged: list[tuple[int, str]] = []
  for step in steps:
    try:
      out, why = read(step), None
    except CheckpointMismatch:
      raise
    except Exception as e:  # noqa: BLE001 - whatever the libraries raise for a bad file
      out, why = None, damage_reason(e)
    if all_processes and sharding.any_process(why is not None) and why is None:
      why = "another process could not read it"
    if why is None:
      return step, out, damaged
    damaged.append((step, why))
  raise ValueError(f"no readable checkpoint in {mgr.directory}: "
                   + "; ".join(f"step {s}: {why}" for s, why in damaged)
                   + " (restore the folder from a copy, or use a fresh --workdir)")


def read_workdir(workdir) -> tuple[dict, dict, int]:
  """(config dict, train-state tree of numpy arrays, step) of a training workdir's newest
  readable checkpoint (newer damaged steps are warned about and left in place), without
  building the optimiser, whatever device count wrote it."""
  workdir = Path(workdir).absolute()
  if not (workdir / CONFIG_FILE).exists():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no {CONFIG_FILE})")
  # The data position is not read, but naming its handler keeps orbax from warning about it.
  mgr = ocp.CheckpointManager(workdir / CHECKPOINTS_DIR,
                              item_handlers={"state": ocp.StandardCheckpointHandler(),
                                             "data": grain.checkpoint.CheckpointHandler()})
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def read(step):
    meta = mgr.item_metadata(step)
    meta = meta["state"] if "state" in meta else meta
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one), meta,
        is_leaf=lambda m: hasattr(m, "shape"))
    return mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]

  try:
    step, state, damaged = newest_readable(mgr, read)
  finally:
    mgr.close()
  for bad, why in damaged:
    log.warning("checkpoint step %d in %s cannot be read (%s): left in place; reading step "
                "%d instead", bad, mgr.directory, why, step)
  return (json.loads((workdir / CONFIG_FILE).read_text()), jax.tree.map(np.asarray, state),
          step)
