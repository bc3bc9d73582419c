"""The train step: IG-FIQA on 8 devices = 1, resume, what the augmented pass may and may
not touch, the augmentation settings from the config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import sharding
from crfiqa_jax.train import augment, config as config_lib
from crfiqa_jax.train.step import augment_params
from crfiqa_jax.train.trainer import Trainer, train
from helpers import as_numpy, batch as _batch, tiny_config as _config


def _ig_steps(n_devices):
  """Three IG steps at 2 steps per epoch (so α moves at the third), centres sharded."""
  config = _config(shard_centres=True, method="igfiqa")
  mesh = sharding.make_mesh(jax.devices()[:n_devices])
  trainer = Trainer(config, num_classes=10, num_examples=32, mesh=mesh)
  state, alphas = trainer.init(), []
  for seed in (0, 1, 2):
    state, metrics = trainer.step_fn(state, sharding.global_batch(_batch(seed), mesh))
    alphas.append(float(metrics["ig_alpha"]))
  return state, as_numpy(metrics), alphas


def test_ig_step_on_eight_devices_matches_one():
  s1, m1, a1 = _ig_steps(1)
  s8, m8, a8 = _ig_steps(8)
  # α = 0.9 + 0.1·epoch/E, E = num_epochs = 34, epoch = step // 2.
  np.testing.assert_allclose(a8, [0.9, 0.9, 0.9 + 0.1 / 34], rtol=1e-6)
  assert a1 == a8
  # v is split along classes with the centres: 16 padded classes, 2 per device.
  assert s8.class_ccs.shape == (16,)
  assert s8.class_ccs.sharding.spec == jax.sharding.PartitionSpec("data")
  assert {s.data.shape for s in s8.class_ccs.addressable_shards} == {(2,)}
  s1, s8 = as_numpy(s1), as_numpy(s8)
  for k in ("loss", "loss_arc", "loss_cr", "cr", "ig_weight", "grad_norm"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, err_msg=k)
  np.testing.assert_allclose(s8.class_ccs[:10], s1.class_ccs[:10], rtol=1e-5, atol=1e-6)
  assert np.all(s1.class_ccs[:10] < 1.0)          # every class was seen and moved
  np.testing.assert_array_equal(s8.class_ccs[10:], 1.0)  # padding never updated
  np.testing.assert_allclose(s8.params["centres"][:, :10], s1.params["centres"][:, :10],
                             rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               s8.params["backbone"], s1.params["backbone"])


def test_augmented_pass_reaches_nothing_but_the_quality_head():
  """From the same state on the same batch: IG-FIQA with backbone_grad off and CR-FIQA
  with λ = 0 give the same BN running statistics, centres and backbone (all learn from the
  clean batch's ArcFace loss only); only qs differs. With backbone_grad on (default) the
  augmented quality loss also moves the backbone."""
  def one(**kw):
    config = _config(clip_norm=0.0, **kw)
    trainer = Trainer(config, num_classes=10, num_examples=160,
                            mesh=sharding.make_mesh(jax.devices()[:1]))
    state, metrics = trainer.step_fn(trainer.init(),
                                     sharding.global_batch(_batch(), trainer.mesh))
    one.metrics = as_numpy(metrics)
    return as_numpy(state)

  cr0 = one(lambda_cr=0.0)
  m_cr = one.metrics
  ig_head = one(method="igfiqa", ig_backbone_grad=False)
  # The logged ccs/nnccs are the clean batch's for both methods (the same forward here);
  # IG-FIQA logs its augmented batch's apart.
  for k in ("ccs", "nnccs"):
    np.testing.assert_allclose(one.metrics[k], m_cr[k], rtol=1e-5, atol=1e-6)
    assert abs(float(one.metrics["aug_" + k]) - float(m_cr[k])) > 1e-4
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, ig_head.batch_stats, cr0.batch_stats)
  close(ig_head.params["centres"], cr0.params["centres"])
  for name, sub in ig_head.params["backbone"].items():
    if name != "qs":
      jax.tree.map(close, sub, cr0.params["backbone"][name])
  assert not np.allclose(ig_head.params["backbone"]["qs"]["kernel"],
                         cr0.params["backbone"]["qs"]["kernel"])
  ig = one(method="igfiqa")
  jax.tree.map(close, ig.batch_stats, cr0.batch_stats)
  close(ig.params["centres"], cr0.params["centres"])
  assert not np.allclose(ig.params["backbone"]["fc"]["kernel"],
                         ig_head.params["backbone"]["fc"]["kernel"])


def test_ig_resume_restores_class_ccs_bit_identical(tiny_records, tmp_path):
  kw = dict(data_dir=tiny_records, method="igfiqa")
  straight = train(_config(total_steps=6, **kw), tmp_path / "a")
  train(_config(total_steps=3, **kw), tmp_path / "b")
  resumed = train(_config(total_steps=6, **kw), tmp_path / "b")
  a, b = as_numpy(straight), as_numpy(resumed)
  assert a.class_ccs.shape == (10,) and np.all(a.class_ccs < 1.0)
  np.testing.assert_array_equal(a.class_ccs, b.class_ccs)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)


def test_unknown_method_is_refused():
  with pytest.raises(ValueError, match="method must be 'crfiqa' or 'igfiqa'"):
    Trainer(_config(method="ig"), num_classes=10, num_examples=160)


def test_augment_parameters_come_from_the_config():
  base = augment_params(config_lib.load_config("small", {}))
  assert base == augment.AugmentParams()           # the defaults, unchanged for small/large
  demo = augment_params(config_lib.load_config("demo", {"method": "igfiqa"}))
  assert (demo.p_rescale, demo.min_scale, demo.erase_area, demo.p_gray) == (
      0.25, 0.4, (0.02, 0.2), 0.1)
  config = _config(method="igfiqa")
  config.ig_augment = {"p_rescale": 0.0, "p_erase": 0.0, "p_jitter": 0.0, "p_gray": 0.0}
  trainer = Trainer(config, num_classes=10, num_examples=32)
  assert trainer.step_fn is not None
  none = augment_params(config)
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)), jnp.uint8)
  np.testing.assert_array_equal(augment.augment(imgs, jax.random.key(0), none), imgs)
  config.ig_augment = {"p_blur": 0.5}
  with pytest.raises(ValueError, match="unknown keys \\['p_blur'\\]"):
    augment_params(config)
  config.ig_augment = {"p_gray": 1.5}
  with pytest.raises(ValueError, match="p_gray must be a probability"):
    augment_params(config)
