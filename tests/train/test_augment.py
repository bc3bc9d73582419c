"""IG-FIQA's on-device augmentations, each checked by hand, and their purity."""

import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax.train import augment


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
