"""orbax checkpoints holding the train state and the grain iterator position.

One checkpoint step = {"state": TrainState (sharded arrays), "data": grain iterator state
(per process)}. `restore_or_init` restores the latest step onto the current mesh through
an abstract target that carries the shardings, so a run resumes on a different device
count as long as the shapes agree (the padded class count must match).
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def manager(workdir: str | Path, *, max_to_keep: int = 3,
            save_interval_steps: int = 1) -> ocp.CheckpointManager:
  directory = Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         save_interval_steps=save_interval_steps,
                                         create=True)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("state", "data"))


def save(mgr: ocp.CheckpointManager, step: int, state, data_iter=None, *,
         force: bool = False) -> bool:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mgr: ocp.CheckpointManager, abstract_state, data_iter=None, step: int | None = None):
  """Restores `step` (default latest) into the shapes/shardings of `abstract_state`
  (a pytree of jax.ShapeDtypeStruct with .sharding) and, if given, `data_iter` in place."""
  step = mgr.latest_step() if step is None else step
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(**items))
  except ValueError as e:
    raise ValueError(f"Checkpoint step {step} in {mgr.directory} does not fit the current "
                     f"model/config ({e}). Use a fresh --workdir or the matching config.") from e
  return restored["state"]


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def restore_raw(workdir: str | Path) -> tuple[dict, dict, int]:
  """(config dict, train-state tree of numpy arrays, step) of a training workdir's latest
  checkpoint, without building the optimiser: for inference and analysis."""
  import json
  workdir = Path(workdir).absolute()
  if not (workdir / "config.json").exists():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json)")
  mgr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"))
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint yet")
  state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return json.loads((workdir / "config.json").read_text()), state, step
