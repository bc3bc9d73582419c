"""The optimiser against a hand computation of PyTorch's SGD semantics."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crfiqa_jax import optim


def test_sgd_weight_decay_and_backbone_only_clipping():
  lr, wd, mom = 0.1, 5e-4, 0.9
  tx = optim.make_optimizer(optax.constant_schedule(lr), momentum=mom, weight_decay=wd,
                            clip_norm=5.0)
  params = {"backbone": {"w": jnp.array([1.0, -2.0])}, "centres": jnp.array([[0.5, 0.5]])}
  grads = {"backbone": {"w": jnp.array([30.0, 40.0])}, "centres": jnp.array([[6.0, 8.0]])}
  state = tx.init(params)
  p = {k: np.asarray(v["w"] if k == "backbone" else v) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  cur = params
  for _ in range(2):
    upd, state = tx.update(grads, state, cur)
    cur = optax.apply_updates(cur, upd)
    # PyTorch: clip_grad_norm_(backbone, 5) → g += wd·p → buf = mom·buf + g → p -= lr·buf.
    g_b = np.array([30.0, 40.0]) * 5.0 / 50.0     # |g| = 50 → scaled to norm 5
    g_c = np.array([[6.0, 8.0]])                   # centres: not clipped
    for k, g in (("backbone", g_b), ("centres", g_c)):
      d = g + wd * p[k]
      buf[k] = mom * buf[k] + d
      p[k] = p[k] - lr * buf[k]
  np.testing.assert_allclose(cur["backbone"]["w"], p["backbone"], rtol=1e-6)
  np.testing.assert_allclose(cur["centres"], p["centres"], rtol=1e-6)


def test_step_schedule_and_linear_scaling():
  assert optim.learning_rate(0.1, 128) == pytest.approx(0.025)
  sched = optim.step_schedule(0.1, steps_per_epoch=10, decay_epochs=(2, 3))
  assert [float(sched(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
