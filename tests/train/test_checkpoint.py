"""Train-state checkpoints: a run resumes on another device count (centres re-padded), and
read_workdir reads whatever wrote it."""

import jax
import numpy as np

from crfiqa_jax import sharding
from crfiqa_jax.serve import model_io
from crfiqa_jax.train.trainer import train
from helpers import as_numpy, tiny_config


def _cfg(data_dir, **kw):
  return tiny_config(data_dir=data_dir, shard_centres="true", **kw)


def test_resume_on_another_device_count(tiny_records, tmp_path):
  mesh4 = sharding.make_mesh(jax.devices()[:4])
  mesh2 = sharding.make_mesh(jax.devices()[:2])
  straight = train(_cfg(tiny_records, total_steps=4, checkpoint_every=2),
                         tmp_path / "a", mesh=mesh4)
  train(_cfg(tiny_records, total_steps=2, checkpoint_every=2), tmp_path / "b",
              mesh=mesh4)
  # 10 classes: padded to 12 on 4 devices, 10 on 2; the checkpoint is re-padded.
  resumed = train(_cfg(tiny_records, total_steps=4, checkpoint_every=2),
                        tmp_path / "b", mesh=mesh2)
  assert int(resumed.step) == 4 and resumed.params["centres"].shape == (32, 10)
  a, b = as_numpy(straight.params), as_numpy(resumed.params)
  a["centres"] = a["centres"][:, :10]
  for (k, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(k))
  # read_workdir (score, analyze) reads it whatever wrote it.
  _, state, step = model_io.read_workdir(tmp_path / "a")
  assert step == 4 and state["params"]["centres"].shape == (32, 12)
