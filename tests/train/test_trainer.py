"""The Trainer and the training loop: 8 devices = 1 device, class-sharded centres, one trace,
bit-identical resume, clear errors, the batch augmentation (divergence: test_loop.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import sharding
from crfiqa_jax.train import config as config_lib, step, trainer as trainer_lib
from crfiqa_jax.train.trainer import Trainer, train
from helpers import as_numpy, batch as _batch, tiny_config as _config


def _one_step(n_devices, shard_centres):
  config = _config(shard_centres=shard_centres)
  mesh = sharding.make_mesh(jax.devices()[:n_devices])
  trainer = Trainer(config, num_classes=10, num_examples=160, mesh=mesh)
  state = trainer.init()
  state, metrics = trainer.step_fn(state, sharding.global_batch(_batch(), mesh))
  state, metrics = trainer.step_fn(state, sharding.global_batch(_batch(1), mesh))
  return as_numpy(state), as_numpy(metrics), trainer


@pytest.mark.parametrize("shard_centres", [False, True])
def test_eight_devices_match_one(shard_centres):
  s1, m1, _ = _one_step(1, shard_centres)
  s8, m8, t8 = _one_step(8, shard_centres)
  if shard_centres:
    assert t8.num_classes_padded == 16 and s8.params["centres"].shape == (32, 16)
  for k in ("loss", "loss_arc", "loss_cr", "cr", "grad_norm"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, err_msg=k)
  c1, c8 = s1.params["centres"][:, :10], s8.params["centres"][:, :10]
  np.testing.assert_allclose(c8, c1, rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               s8.params["backbone"], s1.params["backbone"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               s8.batch_stats, s1.batch_stats)


def test_sharded_centres_live_split_over_devices():
  config = _config(shard_centres=True)
  trainer = Trainer(config, num_classes=10, num_examples=160)
  state = trainer.init()
  centres = state.params["centres"]
  assert centres.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  assert {s.data.shape for s in centres.addressable_shards} == {(32, 2)}


@pytest.mark.parametrize("method", ["crfiqa", "igfiqa"])
def test_sharded_centres_are_never_gathered_whole(method):
  """Class-sharded centres stay split in the compiled step: no all-gather produces the
  whole class axis, and the step's temporaries stay far below one copy of all the centres
  (without the cosines' layout pinned in losses.cosine_matrix, XLA gathers them to every
  device for the embeddings' gradient)."""
  n_classes = 200_000                    # 32 × 200,000 fp32 centres = 25.6 MB
  # margin_fallback and no dropout: the settings under which XLA:CPU gathered them.
  trainer = Trainer(_config(shard_centres=True, method=method, margin_fallback=True,
                                  dropout=0.0), num_classes=n_classes,
                          num_examples=160)
  c = trainer.num_classes_padded
  batch_sh = sharding.batch_sharding(trainer.mesh)
  batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.uint8, sharding=batch_sh),
           "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=batch_sh)}
  compiled = trainer.step_fn.lower(trainer.abstract_target(), batch).compile()
  gathered = [m.group(1) for m in re.finditer(r"= \w+\[([\d,]*)\][^=]*? all-gather\(",
                                               compiled.as_text())]
  assert gathered, "expected the (small) embeddings to be gathered"
  assert not [g for g in gathered if str(c) in g.split(",")], gathered
  centres_bytes = 32 * c * 4
  assert compiled.memory_analysis().temp_size_in_bytes < centres_bytes  # a gathered copy ≥ it


def test_step_traced_once_and_resume_is_exact(tiny_records, tmp_path, monkeypatch):
  traces = []

  def counted(*args, **kw):  # Python runs only when jax traces the step
    traces.append(1)
    return step.train_step(*args, **kw)

  monkeypatch.setattr(trainer_lib, "train_step", counted)
  straight = train(_config(data_dir=tiny_records, total_steps=6), tmp_path / "a")
  assert len(traces) == 1  # one trace over six steps
  monkeypatch.undo()
  # "Kill" after 3 steps, then rerun the same command with a longer horizon.
  part = train(_config(data_dir=tiny_records, total_steps=3), tmp_path / "b")
  assert int(part.step) == 3
  resumed = train(_config(data_dir=tiny_records, total_steps=6), tmp_path / "b")
  assert int(resumed.step) == 6
  a, b = as_numpy(straight), as_numpy(resumed)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)
  lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 6  # steps 1-3, then 4-6 after the resume


def test_clear_errors(tiny_records, tmp_path):
  with pytest.raises(config_lib.ConfigError, match="Unknown config key 'batchsize'.*batch_size"):
    _config(batchsize=8)
  with pytest.raises(ValueError, match="data_dir is empty"):
    train(_config(), tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    train(_config(data_dir=tmp_path / "missing"), tmp_path)
  with pytest.raises(ValueError, match="not divisible by the number of devices"):
    train(_config(data_dir=tiny_records, batch_size=12), tmp_path)
  with pytest.raises(config_lib.ConfigError, match="No config 'nope'"):
    config_lib.load_config("nope")


def test_augment_batch_degrades_the_training_batch_itself():
  """augment_batch with grey always and nothing else: the step equals a plain step on the
  batch greyed by hand (Y = 0.299 R + 0.587 G + 0.114 B); off, the batch is untouched."""
  grey_only = {"augment_batch": "true", "ig_augment.p_gray": "1.0",
               "ig_augment.p_rescale": "0.0", "ig_augment.p_erase": "0.0",
               "ig_augment.p_jitter": "0.0"}
  batch = _batch(3)
  y = batch["image"].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  by_hand = dict(batch, image=np.repeat(y[..., None], 3, -1).astype(np.float32))
  results = []
  for cfg, b in ((grey_only, batch), ({}, by_hand), ({}, batch)):
    trainer = Trainer(_config(**cfg), num_classes=10, num_examples=160)
    _, m = trainer.step_fn(trainer.init(), sharding.global_batch(b, trainer.mesh))
    results.append(as_numpy(m))
  for k in ("loss", "cr", "grad_norm"):
    np.testing.assert_allclose(results[0][k], results[1][k], rtol=1e-4, err_msg=k)
  assert abs(results[0]["loss"] - results[2]["loss"]) > 1e-4
