"""orbax checkpoints holding the train state and the grain iterator position.

One checkpoint step = {"state": TrainState (sharded arrays), "data": grain iterator state
(per process)}. `restore` restores a step onto the current mesh through an abstract target
that carries the shardings, so a run resumes on any device or process count (elastic):
8 devices → 4 → 1, two processes → one. Class-sharded centres are padded to a multiple of
the device count; when that padded count differs, the saved padding columns are dropped
and the new ones filled with zeros (padding is masked out of every loss term, so only the
real columns carry information). crfiqa_jax.serve.model_io reads a workdir for inference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from crfiqa_jax.serve.model_io import CHECKPOINTS_DIR

log = logging.getLogger(__name__)


def manager(workdir: str | Path, *, max_to_keep: int = 3,
            save_interval_steps: int = 1) -> ocp.CheckpointManager:
  directory = Path(workdir).absolute() / CHECKPOINTS_DIR
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         save_interval_steps=save_interval_steps,
                                         create=True)
  return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())


def _handlers() -> dict:
  # Named up front so that metadata (saved shapes) can be read before any save or restore.
  return {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}


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


def _names(path) -> tuple:
  """A key path as plain names: metadata trees use dict keys where the state has fields."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _saved_shapes(mgr, step) -> dict:
  """{leaf path names: shape} of a saved state."""
  meta = mgr.item_metadata(step)
  meta = meta["state"] if "state" in meta else meta
  flat = jax.tree_util.tree_flatten_with_path(meta, is_leaf=lambda m: hasattr(m, "shape"))[0]
  return {_names(p): tuple(m.shape) for p, m in flat}


def _repadded_target(abstract_state, saved_shapes):
  """The abstract target, with the saved shapes where only the padded class count differs
  (restored replicated-or-split as the saved count allows); (target, any_changed)."""
  changed = False

  def pick(path, a):
    nonlocal changed
    old = saved_shapes.get(_names(path))
    if old is None or tuple(old) == tuple(a.shape):
      return a
    if len(old) != a.ndim or tuple(old[:-1]) != tuple(a.shape[:-1]):
      raise ValueError(f"checkpoint leaf {jax.tree_util.keystr(path)} has shape {old}, the "
                       f"model wants {a.shape}: not the same model; use a fresh --workdir")
    changed = True  # only the (last, class) axis differs: its padding
    mesh = a.sharding.mesh
    n = mesh.devices.size
    spec = P(*([None] * (a.ndim - 1)), "data") if old[-1] % n == 0 else P()
    return jax.ShapeDtypeStruct(tuple(old), a.dtype, sharding=NamedSharding(mesh, spec))

  return jax.tree_util.tree_map_with_path(pick, abstract_state), changed


def _repad(state, abstract_state):
  """Class-axis leaves (centres [D, C], IG-FIQA's class_ccs [C], their optimiser slots) cut
  or zero-padded along their last axis to the current padded class count."""
  def fit(x, a):
    if x.shape == a.shape:
      return x
    cut = x[..., :min(x.shape[-1], a.shape[-1])]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, a.shape[-1] - cut.shape[-1])]
    return jax.device_put(jax.numpy.pad(cut, pad), a.sharding)

  return jax.tree.map(fit, state, abstract_state)


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)
