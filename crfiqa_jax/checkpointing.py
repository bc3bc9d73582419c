"""orbax checkpoints holding the train state and the grain iterator position.

One checkpoint step = {"state": TrainState (sharded arrays), "data": grain iterator state
(per process)}. `restore` restores a step onto the current mesh through an abstract target
that carries the shardings, so a run resumes on any device or process count (elastic):
8 devices → 4 → 1, two processes → one. Class-sharded centres are padded to a multiple of
the device count; when that padded count differs, the saved padding columns are dropped
and the new ones filled with zeros (padding is masked out of every loss term, so only the
real columns carry information). `restore_raw` reads a workdir into host numpy arrays,
whatever device count wrote it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import numpy as np
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
  saved = _saved_shapes(mgr, step)
  target, repad = _repadded_target(abstract_state, saved)
  items = {"state": ocp.args.StandardRestore(target)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(**items))
  except ValueError as e:
    raise ValueError(f"Checkpoint step {step} in {mgr.directory} does not fit the current "
                     f"model/config ({e}). Use a fresh --workdir or the matching config.") from e
  state = restored["state"]
  if repad:
    state = _repad(state, abstract_state)
  return state


def _saved_shapes(mgr, step):
  meta = mgr.item_metadata(step)
  meta = meta["state"] if "state" in meta else meta
  return jax.tree.map(lambda m: tuple(m.shape), meta,
                      is_leaf=lambda m: hasattr(m, "shape"))


def _repadded_target(abstract_state, saved_shapes):
  """The abstract target, with the saved shapes where only the padded class count differs
  (restored replicated-or-split as the saved count allows); (target, any_changed)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  changed = False
  flat_saved = dict(jax.tree_util.tree_flatten_with_path(saved_shapes)[0])

  def pick(path, a):
    nonlocal changed
    old = flat_saved.get(path)
    if old is None or tuple(old) == tuple(a.shape):
      return a
    if len(old) != 2 or old[0] != a.shape[0]:
      raise ValueError(f"checkpoint leaf {jax.tree_util.keystr(path)} has shape {old}, the "
                       f"model wants {a.shape}: not the same model; use a fresh --workdir")
    changed = True
    mesh = a.sharding.mesh
    n = mesh.devices.size
    spec = P(None, "data") if old[1] % n == 0 else P()
    return jax.ShapeDtypeStruct(tuple(old), a.dtype, sharding=NamedSharding(mesh, spec))

  return jax.tree_util.tree_map_with_path(pick, abstract_state), changed


def _repad(state, abstract_state):
  """Columns of class-axis leaves cut or zero-padded to the current padded class count."""
  def fit(x, a):
    if x.shape == a.shape:
      return x
    cut = x[:, :min(x.shape[1], a.shape[1])]
    out = jax.numpy.pad(cut, ((0, 0), (0, a.shape[1] - cut.shape[1])))
    return jax.device_put(out, a.sharding)

  return jax.tree.map(fit, state, abstract_state)


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
  # One local device as the target: independent of the device count that wrote it.
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  meta = mgr.item_metadata(step)
  meta = meta["state"] if "state" in meta else meta
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one),
                        meta, is_leaf=lambda m: hasattr(m, "shape"))
  state = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))["state"]
  state = jax.tree.map(np.asarray, state)
  return json.loads((workdir / "config.json").read_text()), state, step
