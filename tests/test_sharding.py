"""The device mesh and shardings: padded class counts, batch divisibility with a usable
message, which state leaves split along classes, global batches from process-local data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from crfiqa_jax import sharding


def test_mesh_padding_and_batch_checks():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.size == len(jax.devices()) == 8
  assert sharding.padded_num_classes(10, mesh, shard_centres=True) == 16
  assert sharding.padded_num_classes(16, mesh, shard_centres=True) == 16
  assert sharding.padded_num_classes(10, mesh, shard_centres=False) == 10
  assert sharding.check_batch_size(64, mesh) == 64  # one process: its share is all of it
  with pytest.raises(ValueError, match="not divisible by the number of devices \\(8\\).*"
                                       "--config.batch_size=96"):
    sharding.check_batch_size(100, mesh)


def test_state_shardings_split_only_the_class_axis():
  mesh = sharding.make_mesh()
  state = {"params": {"backbone": {"w": jnp.zeros((3, 3))}, "centres": jnp.zeros((4, 16))},
           "opt": {"centres": jnp.zeros((4, 16))}, "class_ccs": jnp.ones(16),
           "step": jnp.zeros(())}
  split = sharding.state_shardings(state, mesh, shard_centres=True)
  assert split["params"]["centres"].spec == P(None, "data")
  assert split["opt"]["centres"].spec == P(None, "data")
  assert split["class_ccs"].spec == P("data")
  assert split["params"]["backbone"]["w"].spec == P() and split["step"].spec == P()
  whole = sharding.state_shardings(state, mesh, shard_centres=False)
  assert all(s.spec == P() for s in jax.tree.leaves(whole))


def test_global_batch_is_split_over_the_devices():
  mesh = sharding.make_mesh()
  local = {"image": np.arange(16 * 2).reshape(16, 2), "label": np.arange(16)}
  batch = sharding.global_batch(local, mesh)
  assert batch["image"].shape == (16, 2)
  assert {s.data.shape for s in batch["label"].addressable_shards} == {(2,)}
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])


def test_any_process_with_one_process_is_the_flag():
  # Several processes agree through one all-gather: tests/end_to_end/test_preemption.py.
  assert sharding.any_process(True) is True and sharding.any_process(0) is False
