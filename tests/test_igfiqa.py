"""IG-FIQA: the pinned loss functions against hand computations, the augmentations, and the
train step (8 devices = 1, resume, what the augmented pass may and may not touch)."""

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import augment, losses, sharding, train
from test_train import _batch, _config


# --- The pinned API. ---------------------------------------------------------------------

def test_update_hand_computed_with_repeated_labels():
  v = jnp.array([1.0, 0.5, 0.8, 1.0])          # class 3: a padding class
  ccs = jnp.array([0.2, 0.5, 0.6])
  labels = jnp.array([0, 2, 0])                 # class 0 twice: its mean CCS is 0.4
  update = jax.jit(lambda v, c, y: losses.igfiqa_update(v, c, y, alpha=0.9))
  got = update(v, ccs, labels)
  np.testing.assert_allclose(got, [0.9 * 1.0 + 0.1 * 0.4, 0.5, 0.9 * 0.8 + 0.1 * 0.5, 1.0],
                             rtol=1e-6)
  # The order of the repeated samples does not matter (a segment mean, not last-write-wins).
  perm = np.array([2, 1, 0])
  np.testing.assert_array_equal(update(v, ccs[perm], labels[perm]), got)
  # α as a traced scalar (it changes every epoch inside the jitted step).
  got_a = jax.jit(lambda a: losses.igfiqa_update(v, ccs, labels, alpha=a))(0.95)
  np.testing.assert_allclose(got_a[2], 0.95 * 0.8 + 0.05 * 0.5, rtol=1e-6)


def test_weights_hand_computed_and_padding_excluded():
  real = [0.9, 0.5, 0.7, 1.0]
  v = jnp.array(real + [1.0, 1.0])               # two trailing padding classes
  labels = jnp.array([0, 1, 2, 3, 2])
  mean, std = statistics.fmean(real), statistics.pstdev(real)  # population std
  want = [1.0 + min(0.0, max(-1.0, (real[y] - mean) / (std + 1e-6))) for y in labels]
  assert want[1] == 0.0 and 0.5 < want[2] < 0.7 and want[0] == 1.0  # clip at -1, and 0
  got = jax.jit(lambda v, y: losses.igfiqa_weights(v, y, num_classes=4))(v, labels)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Counting the padding classes would move mean and std: the weights differ.
  assert not np.allclose(losses.igfiqa_weights(v, labels), want, atol=1e-3)
  np.testing.assert_allclose(losses.igfiqa_weights(v[:4], labels), want, rtol=1e-6)
  # All classes equal: z = 0 → every weight 1 (the 1e-6 keeps it finite).
  np.testing.assert_array_equal(losses.igfiqa_weights(jnp.ones(5), labels), 1.0)


def test_igfiqa_loss_parts():
  rng = np.random.default_rng(0)
  emb, aug = (jnp.asarray(rng.normal(size=(4, 8)), jnp.float32) for _ in range(2))
  centres = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  q = jnp.asarray(rng.normal(size=4), jnp.float32)
  labels = jnp.array([0, 1, 1, 3])
  v = jnp.array([1.0, 0.2, 0.9, 0.8, 1.0, 1.0])

  def f(emb, aug, q, centres):
    return losses.igfiqa_loss(emb, aug, q, centres, labels, v, alpha=0.9, num_classes=5)

  out, new_v, w = f(emb, aug, q, centres)
  # Reference: CR target and CCS from the augmented embeddings, ArcFace from the clean.
  clean = losses.crfiqa_loss(emb, q, centres, labels, num_classes=5)
  on_aug = losses.crfiqa_loss(aug, q, centres, labels, num_classes=5)
  np.testing.assert_allclose(out.loss_arc, clean.loss_arc, rtol=1e-6)
  np.testing.assert_allclose(out.cr, on_aug.cr, rtol=1e-6)
  want_v = losses.igfiqa_update(v, on_aug.ccs, labels, alpha=0.9)
  np.testing.assert_allclose(new_v, want_v, rtol=1e-6)
  np.testing.assert_allclose(w, losses.igfiqa_weights(want_v, labels, num_classes=5))
  sl1 = losses.smooth_l1(q, on_aug.cr)
  np.testing.assert_allclose(out.loss, clean.loss_arc + 10 * np.mean(w * sl1), rtol=1e-5)
  # Gradients: none reaches the centres or the embeddings through the augmented branch.
  g_emb, g_aug, g_q, g_c = jax.grad(lambda *a: f(*a)[0].loss, argnums=(0, 1, 2, 3))(
      emb, aug, q, centres)
  np.testing.assert_array_equal(g_aug, 0.0)
  g_c_arc = jax.grad(lambda c: losses.crfiqa_loss(emb, q, c, labels, num_classes=5,
                                                  lambda_cr=0.0).loss)(centres)
  np.testing.assert_allclose(g_c, g_c_arc, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(g_q)).max() > 0


# --- Augmentations. ----------------------------------------------------------------------

def test_augmentations_hand_checked():
  x = jnp.full((2, 16, 16, 3), 100.0)
  np.testing.assert_allclose(augment.rescale(x, jnp.array([0.3, 0.7])), 100.0, rtol=1e-5)
  ramp = jnp.broadcast_to(jnp.arange(16.0)[None, :, None, None] * 10, (1, 16, 16, 3))
  np.testing.assert_allclose(augment.rescale(ramp, jnp.array([1.0])), ramp, atol=1e-4)
  small = np.asarray(augment.rescale(ramp, jnp.array([0.25])))[0, :, 0, 0]
  assert np.all(np.diff(small) >= -1e-4) and small.min() > 0 and small.max() < 150
  assert np.abs(small - np.asarray(ramp)[0, :, 0, 0]).max() > 5  # detail is lost

  rgb = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)), jnp.float32)
  g = np.asarray(augment.grayscale(rgb))
  np.testing.assert_allclose(g[..., 1], 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1]
                             + 0.114 * rgb[..., 2], rtol=1e-5)
  np.testing.assert_array_equal(g[..., 0], g[..., 2])
  np.testing.assert_allclose(augment.color_jitter(rgb, jnp.ones((1, 3))), rgb, rtol=1e-5)
  np.testing.assert_allclose(augment.color_jitter(rgb, jnp.array([[0.5, 1.0, 1.0]])),
                             rgb * 0.5, rtol=1e-5)

  erased = np.asarray(augment.erase(x, jnp.array([[2.0, 3.0, 4.0, 5.0], [0, 0, 0, 0]])))
  mask = np.zeros((16, 16), bool)
  mask[2:6, 3:8] = True
  np.testing.assert_array_equal(erased[0][mask], 0.0)
  np.testing.assert_array_equal(erased[0][~mask], 100.0)
  np.testing.assert_array_equal(erased[1], 100.0)


def test_augment_is_a_pure_function_of_the_key():
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)), jnp.uint8)
  f = jax.jit(augment.augment, static_argnums=2)
  a, b = f(imgs, jax.random.key(1)), f(imgs, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert a.dtype == jnp.float32 and a.shape == imgs.shape
  assert float(a.min()) >= 0 and float(a.max()) <= 255
  assert not np.allclose(f(imgs, jax.random.key(2)), a)
  changed = np.abs(np.asarray(a) - np.asarray(imgs, np.float32)).max(axis=(1, 2, 3)) > 1
  assert 0 < changed.sum()
  none = augment.AugmentParams(p_rescale=0, p_erase=0, p_jitter=0, p_gray=0)
  np.testing.assert_array_equal(f(imgs, jax.random.key(1), none), imgs)


# --- The train step. ---------------------------------------------------------------------

def _ig_steps(n_devices):
  """Three IG steps at 2 steps per epoch (so α moves at the third), centres sharded."""
  config = _config(shard_centres=True, method="igfiqa")
  mesh = sharding.make_mesh(jax.devices()[:n_devices])
  trainer = train.Trainer(config, num_classes=10, num_examples=32, mesh=mesh)
  state, alphas = trainer.init(), []
  for seed in (0, 1, 2):
    state, metrics = trainer.step_fn(state, sharding.global_batch(_batch(seed), mesh))
    alphas.append(float(metrics["ig_alpha"]))
  return state, train.as_numpy(metrics), alphas


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
  s1, s8 = train.as_numpy(s1), train.as_numpy(s8)
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
    trainer = train.Trainer(config, num_classes=10, num_examples=160,
                            mesh=sharding.make_mesh(jax.devices()[:1]))
    state, metrics = trainer.step_fn(trainer.init(),
                                     sharding.global_batch(_batch(), trainer.mesh))
    one.metrics = train.as_numpy(metrics)
    return train.as_numpy(state)

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
  straight = train.train(_config(total_steps=6, **kw), tmp_path / "a")
  train.train(_config(total_steps=3, **kw), tmp_path / "b")
  resumed = train.train(_config(total_steps=6, **kw), tmp_path / "b")
  a, b = train.as_numpy(straight), train.as_numpy(resumed)
  assert a.class_ccs.shape == (10,) and np.all(a.class_ccs < 1.0)
  np.testing.assert_array_equal(a.class_ccs, b.class_ccs)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)


def test_unknown_method_is_refused():
  with pytest.raises(ValueError, match="method must be 'crfiqa' or 'igfiqa'"):
    train.Trainer(_config(method="ig"), num_classes=10, num_examples=160)


def test_augment_parameters_come_from_the_config():
  from crfiqa_jax import main as cli
  base = train.augment_params(cli.load_config("small", {}))
  assert base == augment.AugmentParams()           # the defaults, unchanged for small/large
  demo = train.augment_params(cli.load_config("demo", {"method": "igfiqa"}))
  assert (demo.p_rescale, demo.min_scale, demo.erase_area, demo.p_gray) == (
      0.25, 0.4, (0.02, 0.2), 0.1)
  config = _config(method="igfiqa")
  config.ig_augment = {"p_rescale": 0.0, "p_erase": 0.0, "p_jitter": 0.0, "p_gray": 0.0}
  trainer = train.Trainer(config, num_classes=10, num_examples=32)
  assert trainer.step_fn is not None
  none = train.augment_params(config)
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)), jnp.uint8)
  np.testing.assert_array_equal(augment.augment(imgs, jax.random.key(0), none), imgs)
  config.ig_augment = {"p_blur": 0.5}
  with pytest.raises(ValueError, match="unknown keys \\['p_blur'\\]"):
    train.augment_params(config)
  config.ig_augment = {"p_gray": 1.5}
  with pytest.raises(ValueError, match="p_gray must be a probability"):
    train.augment_params(config)
