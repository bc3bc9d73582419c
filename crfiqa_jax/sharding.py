"""Device mesh, parameter shardings and global batches.

One mesh axis, "data", over every device of every process. The batch is split along it
(data parallel). The class-centre matrix [D, C] is either replicated or split along its
class axis over the same devices (`shard_centres`), which is how a few million identities
fit: each device holds C/n centres and XLA (GSPMD) inserts the reductions the ArcFace
softmax and the NNCCS max need. Everything else is replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(-1), (DATA,))


def padded_num_classes(num_classes: int, mesh: Mesh, shard_centres: bool) -> int:
  """Columns of the centre matrix: num_classes rounded up to a multiple of the mesh size
  when sharded (padding columns are masked out of the loss)."""
  if not shard_centres:
    return num_classes
  n = mesh.shape[DATA]
  return -(-num_classes // n) * n


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Returns the per-process batch; raises a clear error when the split is uneven."""
  n_dev, n_proc = mesh.shape[DATA], jax.process_count()
  if global_batch % n_dev:
    raise ValueError(
        f"batch_size={global_batch} is not divisible by the number of devices ({n_dev}); "
        f"use a multiple of {n_dev}, e.g. --config.batch_size={max(n_dev, global_batch // n_dev * n_dev)}")
  return global_batch // n_proc


def state_shardings(abstract_state, mesh: Mesh, shard_centres: bool):
  """NamedShardings for a TrainState pytree: centres [D, C] (and their optimiser slots) and
  IG-FIQA's class_ccs [C] split along the class axis when `shard_centres`, everything else
  replicated."""
  repl = replicated(mesh)
  by_class = NamedSharding(mesh, P(None, DATA))
  by_class_1d = NamedSharding(mesh, P(DATA))

  def choose(path, leaf):
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if shard_centres and "centres" in keys and getattr(leaf, "ndim", 0) == 2:
      return by_class
    if shard_centres and "class_ccs" in keys and getattr(leaf, "ndim", 0) == 1:
      return by_class_1d
    return repl

  return jax.tree_util.tree_map_with_path(choose, abstract_state)


def replicated(mesh: Mesh) -> NamedSharding:
  """A copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def class_sharding(mesh: Mesh) -> NamedSharding:
  """[B, C] arrays (cosines, logits) split along the class axis like the centres."""
  return NamedSharding(mesh, P(None, DATA))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles process-local numpy arrays into global jax.Arrays split over "data"."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process: one all-gather that every process must call
  (with one process, `flag` itself)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())
