"""SGD as in the CR-FIQA recipe (paper §4; the released train_cr_fiqa.py and config.py),
built from optax pieces.

Order of operations per step, matching the released PyTorch code:
  1. clip the gradient's global norm to `clip_norm` over the backbone only (the class
     centres are not clipped; clip_grad_norm_ runs on backbone.parameters());
  2. add weight decay·param to every gradient (BN, PReLU, biases and centres included),
     PyTorch-style, i.e. before momentum;
  3. heavy-ball momentum (dampening 0, no Nesterov) and the learning rate.
"""

from __future__ import annotations

from typing import Sequence

import jax
import optax


def learning_rate(base_lr: float, global_batch: int) -> float:
  """Linear scaling rule of the released code: base × global_batch / 512."""
  return base_lr * global_batch / 512


def step_schedule(peak_lr: float, steps_per_epoch: int, decay_epochs: Sequence[float],
                  factor: float = 0.1) -> optax.Schedule:
  """Piecewise-constant lr: ×factor after each number of epochs in `decay_epochs`, i.e.
  from step round(e·steps_per_epoch) on.

  The released code's `lr_step_func` under torch LambdaLR (stepped once per epoch, epochs
  counted from 0) gives lr(epoch) = base·0.1^|{m ∈ MILESTONES : m - 1 ≤ epoch}|: its
  milestone m takes effect after m - 1 epochs, so the released schedule is
  decay_epochs = [m - 1 for m in MILESTONES] (configs/small.py, configs/large.py).
  """
  boundaries = {int(round(e * steps_per_epoch)): factor for e in decay_epochs}
  return optax.piecewise_constant_schedule(peak_lr, boundaries)


def param_groups(params) -> dict:
  """Labels every leaf 'backbone' or 'centres' (the top-level key of the params tree)."""
  return {k: jax.tree.map(lambda _: "centres" if k == "centres" else "backbone", v)
          for k, v in params.items()}


def make_optimizer(schedule: optax.Schedule, *, momentum: float = 0.9,
                   weight_decay: float = 5e-4, clip_norm: float | None = 5.0,
                   trainable: str = "all") -> optax.GradientTransformation:
  """SGD + PyTorch-style weight decay + backbone-only gradient clipping.

  Args:
    trainable: "all", or "qs" to train only the quality head (the paper's "on top"
      ablation: a frozen FR model, only the regression layer learns).
  """
  clip = optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity()
  tx = optax.chain(
      optax.partition({"backbone": clip, "centres": optax.identity()}, param_groups),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(schedule, momentum=momentum),
  )
  if trainable == "qs":
    def labels(params):
      return {k: jax.tree_util.tree_map_with_path(
          lambda p, _: "train" if k == "backbone" and getattr(p[0], "key", None) == "qs"
          else "freeze", v) for k, v in params.items()}
    tx = optax.partition({"train": tx, "freeze": optax.set_to_zero()}, labels)
  elif trainable != "all":
    raise ValueError(f"trainable must be 'all' or 'qs', got {trainable!r}")
  return tx
