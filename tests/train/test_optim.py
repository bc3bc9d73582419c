"""The optimiser against a hand computation of PyTorch's SGD semantics."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crfiqa_jax.train import optim


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


def _released_lr(epoch, milestones, base=0.1):
  # The released lr_step_func under torch LambdaLR (stepped once per epoch, from epoch 0).
  return base * 0.1 ** len([m for m in milestones if m - 1 <= epoch])


@pytest.mark.parametrize("name,milestones,examples,last_epoch,decay_steps", [
    ("small", [20, 28, 32], 490623, 34, (18202, 25866, 29698)),
    ("large", [8, 14, 20, 25], 5822653, 16, (79604, 147836)),
])
def test_named_configs_follow_the_released_schedule_step_for_step(
    name, milestones, examples, last_epoch, decay_steps):
  from crfiqa_jax.train import config as config_lib
  from crfiqa_jax.train import input_pipeline
  config = config_lib.load_config(name)
  spe = input_pipeline.steps_per_epoch(examples, config.batch_size)
  assert spe == {"small": 958, "large": 11372}[name]
  assert config.num_epochs == last_epoch
  sched = optim.step_schedule(optim.learning_rate(config.lr, config.batch_size), spe,
                              config.lr_decay_epochs)
  # Every epoch boundary: the first and last step of each epoch.
  for epoch in range(config.num_epochs):
    want = _released_lr(epoch, milestones)
    for step in (epoch * spe, (epoch + 1) * spe - 1):
      assert float(sched(step)) == pytest.approx(want, rel=1e-6), (name, epoch, step)
  for s in decay_steps:  # the step numbers: the lr drops exactly there
    assert float(sched(s)) == pytest.approx(float(sched(s - 1)) * 0.1, rel=1e-6)
  if name == "large":
    assert config.num_epochs * spe == 181952  # the released CR-FIQA(L) checkpoint
  else:
    assert config.num_epochs * spe == 32572
