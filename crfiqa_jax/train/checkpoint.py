"""orbax checkpoints holding the train state and the grain iterator position.

One checkpoint step = {"state": TrainState (sharded arrays), "data": grain iterator state
(per process)}, in WORKDIR/checkpoints/STEP. `Checkpoints.restore` restores the newest
readable step onto the current mesh through an abstract target that carries the shardings,
so a run resumes on any device or process count (elastic): 8 devices → 4 → 1, two
processes → one. Class-sharded centres are padded to a multiple of the device count; when
that padded count differs, the saved padding columns are dropped and the new ones filled
with zeros (padding is masked out of every loss term, so only the real columns carry
information). crfiqa_jax.serve.model_io reads a workdir for inference.

Faults (docs/faults.md):
* a newest step that cannot be read (a missing, truncated or garbled file, an empty step
  folder) is warned about in one line and moved to WORKDIR/damaged_checkpoints/STEP, never
  deleted; the run resumes from the newest readable step (crfiqa_jax.serve.model_io.
  newest_readable), and only when none is readable does restoring fail;
* a save first checks that the disk has room for a step (the size of the newest step on
  disk, or of the state for the first); a save refused for space, before or while writing,
  is a crfiqa_jax.faults.DiskFull naming the step folder and the bytes needed, the partial
  folder is removed and the previous steps stay as they were.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from crfiqa_jax import faults
from crfiqa_jax.serve.model_io import CHECKPOINTS_DIR, CheckpointMismatch, newest_readable

log = logging.getLogger(__name__)
DAMAGED_DIR = "damaged_checkpoints"   # WORKDIR/damaged_checkpoints/STEP: unreadable steps
FIRST_SAVE_MARGIN = 1 << 20           # bytes of metadata allowed on top of the state


def manager(workdir: str | Path, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """The orbax manager of WORKDIR/checkpoints; steps are saved when the loop says so."""
  directory = Path(workdir).absolute() / CHECKPOINTS_DIR
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())


def _handlers() -> dict:
  # Named up front so that metadata (saved shapes) can be read before any save or restore.
  return {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}


class _QuietNoSpace(logging.Filter):
  """Drops orbax's (absl) and its event loops' (asyncio) own reports of a write refused for
  space: Checkpoints reports it in one line."""

  def filter(self, record) -> bool:
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not faults.mentions_no_space(text)


_quiet = _QuietNoSpace()


def _quiet_closed_loops() -> None:
  """When a write fails, orbax closes its event loop while tensorstore's other writes still
  call back into it ("RuntimeError: Event loop is closed", unraisable, one traceback each);
  the failure itself reaches `Checkpoints.wait`, which reports it once, so those are
  dropped. Installed once per process."""
  previous = sys.unraisablehook
  if getattr(previous, "crfiqa_quiet", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
      previous(unraisable)

  hook.crfiqa_quiet = True
  sys.unraisablehook = hook


class Checkpoints:
  """The checkpoints of one workdir: `restore`, `save`, `wait`, `close`; `latest` is the
  newest step known to be complete on disk (None before any)."""

  def __init__(self, workdir: str | Path, *, max_to_keep: int = 3):
    self.workdir = Path(workdir).absolute()
    for name in ("absl", "asyncio"):
      logging.getLogger(name).addFilter(_quiet)
    _quiet_closed_loops()
    self.mgr = manager(self.workdir, max_to_keep=max_to_keep)
    self.directory = Path(self.mgr.directory)
    self.latest = self.mgr.latest_step()
    self._in_flight: tuple[int, int] | None = None  # (step, bytes) being written
    self._failed: int | None = None                 # a step whose write was refused

  def restore(self, abstract_state, data_iter=None):
    """The newest readable step restored into the shapes/shardings of `abstract_state` (a
    pytree of jax.ShapeDtypeStruct with .sharding) and, if given, `data_iter` in place;
    None when there is no checkpoint. Newer unreadable steps are moved aside."""
    if self.mgr.latest_step() is None:
      return None
    step, state, damaged = newest_readable(
        self.mgr, lambda s: _restore_step(self.mgr, s, abstract_state, data_iter),
        all_processes=True)
    if damaged:
      self._move_aside(damaged, step)
    self.latest = step
    return state

  def _move_aside(self, damaged, good: int):
    if jax.process_index() == 0:
      for step, why in damaged:
        dest = self.workdir / DAMAGED_DIR / str(step)
        k = 1
        while dest.exists():
          k += 1
          dest = self.workdir / DAMAGED_DIR / f"{step}-{k}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(dest))
        log.warning("checkpoint step %d in %s cannot be read (%s): moved to %s; resuming "
                    "from step %d", step, self.directory, why, dest, good)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("crfiqa_jax damaged checkpoints moved")
    self.mgr.reload()

  def needed_bytes(self, state) -> int:
    """Room one more step takes: the newest step's size on disk, else the state's bytes
    and FIRST_SAVE_MARGIN."""
    if self.latest is not None and (self.directory / str(self.latest)).is_dir():
      return _tree_bytes(self.directory / str(self.latest))
    return sum(int(x.nbytes) for x in jax.tree.leaves(state)) + FIRST_SAVE_MARGIN

  def save(self, step: int, state, data_iter=None) -> None:
    """Starts writing `step` in the background after the previous write finished (wait)."""
    self.wait()
    need = self.needed_bytes(state)
    faults.check_space(self.directory / str(step), need)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    self._in_flight = (step, need)
    with self._no_space():
      self.mgr.save(step, args=ocp.args.Composite(**items), force=True)

  def wait(self) -> None:
    """Waits for the write in progress; DiskFull if it was refused for space."""
    with self._no_space():
      self.mgr.wait_until_finished()
    if self._in_flight is not None:
      self.latest, self._in_flight = self._in_flight[0], None

  def close(self) -> None:
    with self._no_space():
      self.mgr.close()
    if self._failed is not None:  # tensorstore may have written more of it meanwhile
      self._remove_partial(self._failed)

  def _remove_partial(self, step: int) -> None:
    if jax.process_index() == 0:
      for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(partial, ignore_errors=True)

  @contextlib.contextmanager
  def _no_space(self):
    try:
      yield
    except Exception as e:
      code = faults.no_space_errno(e)
      if code is None or self._in_flight is None:
        raise
      step, need = self._in_flight
      self._in_flight, self._failed = None, step
      self._remove_partial(step)
      raise faults.DiskFull(self.directory / str(step), need, code=code) from None


def _tree_bytes(folder: Path) -> int:
  return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _restore_step(mgr, step: int, abstract_state, data_iter):
  """One step restored, or the error that says why it cannot be (CheckpointMismatch when it
  is readable but holds another model)."""
  saved = _saved_shapes(mgr, step)
  target, repad = _repadded_target(abstract_state, saved)
  items = {"state": ocp.args.StandardRestore(target)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  state = mgr.restore(step, args=ocp.args.Composite(**items))["state"]
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
  (restored replicated-or-split as the saved count allows); (target, any_changed).
  CheckpointMismatch when the saved leaves are not the model's."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  want = {_names(p) for p, _ in flat}
  if set(saved_shapes) != want:
    odd = sorted("/".join(n) for n in set(saved_shapes) ^ want)
    raise CheckpointMismatch(f"the checkpoint and the model differ in leaves {odd[:4]}: not "
                             "the same model or optimiser; use a fresh --workdir or the "
                             "matching config")
  changed = False

  def pick(path, a):
    nonlocal changed
    old = saved_shapes.get(_names(path))
    if old is None or tuple(old) == tuple(a.shape):
      return a
    if len(old) != a.ndim or tuple(old[:-1]) != tuple(a.shape[:-1]):
      raise CheckpointMismatch(
          f"checkpoint leaf {jax.tree_util.keystr(path)} has shape {old}, the model wants "
          f"{a.shape}: not the same model; use a fresh --workdir")
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
