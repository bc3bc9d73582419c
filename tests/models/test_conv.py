"""crfiqa_jax.conv: the matmul weight gradient against lax's own convolution gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from crfiqa_jax import models
from crfiqa_jax.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(fn, x, k, strides, padding, **kw):
  def loss(x, k):
    y = fn(x, k, strides, padding, dimension_numbers=NHWC, **kw)
    return jnp.sum(y * jnp.cos(y)), y  # a non-linear loss: dy differs per element
  (_, y), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, k)
  return y, g


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 10, 10, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),   # iResNet's strided conv
    ((2, 7, 6, 32), (3, 3, 32, 8), (1, 1), ((1, 1), (1, 1))),
    ((1, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID"),               # projection shortcut
    ((1, 8, 8, 4), (3, 3, 4, 5), (2, 2), "SAME"),                # asymmetric SAME padding
    ((1, 9, 9, 2), (3, 2, 2, 3), (1, 2), ((0, 2), (1, 0))),      # odd kernel and padding
])
def test_matmul_weight_gradient_equals_lax(shape, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  hi = lax.Precision.HIGHEST
  y0, (dx0, dk0) = _grads(lax.conv_general_dilated, x, k, strides, padding, precision=hi)
  for fn in (conv.conv_general_dilated, conv.conv_general_dilated_auto):
    y, (dx, dk) = _grads(fn, x, k, strides, padding, precision=hi)
    np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dk, dk0, rtol=1e-4, atol=1e-4)


def test_weight_gradient_by_hand():
  # y = conv(x, k) with one 2×2 input, 1×1 kernel, stride 1: dL/dk = Σ x·dy (dy = 1).
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  k = jnp.ones((1, 1, 1, 1))
  g = jax.grad(lambda k: conv.conv_general_dilated(
      x, k, (1, 1), "VALID", dimension_numbers=NHWC).sum())(k)
  assert float(g[0, 0, 0, 0]) == 0 + 1 + 2 + 3


def test_unsupported_cases_fall_back_to_lax():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(1, 6, 6, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)  # 2 feature groups
  args = ((1, 1), ((1, 1), (1, 1)))
  got = conv.conv_general_dilated(x, k, *args, dimension_numbers=NHWC, feature_group_count=2)
  want = lax.conv_general_dilated(x, k, *args, dimension_numbers=NHWC, feature_group_count=2)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  k1 = k[:, :, :1, :]
  got = conv.conv_general_dilated(x[..., :1], k1, *args, rhs_dilation=(2, 2),
                                  dimension_numbers=NHWC)
  want = lax.conv_general_dilated(x[..., :1], k1, *args, rhs_dilation=(2, 2),
                                  dimension_numbers=NHWC)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_model_switch_same_outputs_and_gradients():
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
  ref = models.IResNetTiny(conv_grad="xla", dropout=0.0)
  variables = ref.init(jax.random.key(0), x, train=False)

  def loss(params, model):
    (emb, q), _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
    return jnp.sum(emb ** 2) + jnp.sum(q)

  l0, g0 = jax.value_and_grad(loss)(variables["params"], ref)
  for mode in ("matmul", "auto"):
    l1, g1 = jax.value_and_grad(loss)(variables["params"],
                                      models.IResNetTiny(conv_grad=mode, dropout=0.0))
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * float(jnp.abs(b).max()) + 1e-6)
  with pytest.raises(ValueError, match="conv_grad must be"):
    conv.use_matmul_grad("fast")
