"""CR-FIQA losses (paper eqs. 1-6): pure array functions.

Shapes: B = batch, C = classes, D = embedding size. `cos_theta` is the [B, C] matrix of
cosines between L2-normalised embeddings and L2-normalised class centres.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

_ARCCOS_CLIP = 1.0 - 1e-7  # keeps d/dx arccos finite at |cos| = 1


def arcface_logits(cos_theta: jax.Array, labels: jax.Array, *, scale: float = 64.0,
                   margin: float = 0.5) -> jax.Array:
  """ArcFace logits (eq. 1): s·cos(θ_y + m) on the target column, s·cos θ_j elsewhere.

  As in the released code there is no "easy margin" and no threshold fallback: θ_y + m may
  exceed π. Cosines are clipped to [-1, 1]; the target's arccos uses ±(1 - 1e-7) so that its
  gradient stays finite.

  Args:
    cos_theta: [B, C] cosines.
    labels: [B] integer class ids.
  Returns:
    [B, C] logits.
  """
  cos_theta = jnp.clip(cos_theta, -1.0, 1.0)
  cos_y = jnp.take_along_axis(cos_theta, labels[:, None], axis=1)
  theta_y = jnp.arccos(jnp.clip(cos_y, -_ARCCOS_CLIP, _ARCCOS_CLIP))
  target = jnp.cos(theta_y + margin)
  is_target = jnp.arange(cos_theta.shape[1])[None, :] == labels[:, None]
  return scale * jnp.where(is_target, target, cos_theta)


def certainty_ratio(cos_theta: jax.Array, labels: jax.Array, *, form: str = "paper",
                    eps: float = 1e-9) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Certainty ratio (eqs. 2-4) and its parts, all under stop-gradient.

  CCS = cos θ_y; NNCCS = max_{j≠y} cos θ_j.
    form="paper": CR = CCS / (NNCCS + 1 + eps)                         (eq. 4)
    form="code":  CR = CCS / NNCCS, the target column set to -1e-12 before the max
                  (the released training code; its NNCCS can be that -1e-12).
  Columns holding -inf (padding classes) never win the max.

  Returns:
    (cr, ccs, nnccs), each [B]; no gradient flows through any of them.
  """
  cos_theta = jax.lax.stop_gradient(cos_theta)
  is_target = jnp.arange(cos_theta.shape[1])[None, :] == labels[:, None]
  ccs = jnp.take_along_axis(cos_theta, labels[:, None], axis=1)[:, 0]
  if form == "paper":
    nnccs = jnp.max(jnp.where(is_target, -jnp.inf, cos_theta), axis=1)
    cr = ccs / (nnccs + 1.0 + eps)
  elif form == "code":
    nnccs = jnp.max(jnp.where(is_target, -1e-12, cos_theta), axis=1)
    cr = ccs / nnccs
  else:
    raise ValueError(f"certainty_ratio form must be 'paper' or 'code', got {form!r}")
  return cr, ccs, nnccs


def smooth_l1(pred: jax.Array, target: jax.Array, *, beta: float = 0.5) -> jax.Array:
  """Per-sample smooth L1 (eq. 5), PyTorch's convention.

  0.5·d²/β if |d| < β else |d| - 0.5·β, with d = pred - target. Shapes [B] → [B].
  """
  d = jnp.abs(pred - target)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


class LossOutput(NamedTuple):
  loss: jax.Array       # scalar total
  loss_arc: jax.Array   # scalar
  loss_cr: jax.Array    # scalar (mean smooth L1, before λ)
  cr: jax.Array         # [B]
  ccs: jax.Array        # [B]
  nnccs: jax.Array      # [B]


def cosine_matrix(embedding: jax.Array, centres: jax.Array) -> jax.Array:
  """cos θ between rows of `embedding` [B, D] and columns of `centres` [D, C] → [B, C]."""
  x = embedding / jnp.maximum(jnp.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
  w = centres / jnp.maximum(jnp.linalg.norm(centres, axis=0, keepdims=True), 1e-12)
  return x @ w


def crfiqa_loss(embedding: jax.Array, quality: jax.Array, centres: jax.Array,
                labels: jax.Array, *, scale: float = 64.0, margin: float = 0.5,
                lambda_cr: float = 10.0, cr_form: str = "paper", target: str = "cr",
                beta: float = 0.5, eps: float = 1e-9, num_classes: int | None = None,
                sample_weight: jax.Array | None = None,
                margin_fallback: bool = False) -> LossOutput:
  """Total CR-FIQA loss (eq. 6): L = L_Arc + λ·mean(smooth_l1(quality, target)).

  Args:
    embedding: [B, D] un-normalised embeddings.
    quality: [B] regression output.
    centres: [D, C'] class centres (C' ≥ num_classes; columns past num_classes are padding
      that lets the class axis be sharded evenly and are ignored).
    labels: [B] integer labels in [0, num_classes).
    target: "cr" (CR-FIQA) or "ccs" (the paper's CCS-FIQA ablation).
    num_classes: number of real classes; None = all columns of `centres`.
    sample_weight: optional [B] weights of the regression term (IG-FIQA).
    margin_fallback: insightface's guard for θ_y + m > π: where cos θ_y ≤ cos(π - m) the
      target logit becomes s·(cos θ_y - m·sin m) instead of s·cos(θ_y + m), keeping it
      monotonic in θ_y. The released CR-FIQA code has no such guard (default off); small
      models on few classes can otherwise collapse to embeddings far from every centre.
  """
  if target not in ("cr", "ccs"):
    raise ValueError(f"target must be 'cr' or 'ccs', got {target!r}")
  cos_theta = jnp.clip(cosine_matrix(embedding, centres), -1.0, 1.0)
  logits = arcface_logits(cos_theta, labels, scale=scale, margin=margin)
  if margin_fallback:
    cos_y = jnp.take_along_axis(cos_theta, labels[:, None], axis=1)
    is_target = jnp.arange(cos_theta.shape[1])[None, :] == labels[:, None]
    # jnp, not math: the margin is a traced array under a margin ramp.
    use_fallback = is_target & (cos_y <= jnp.cos(math.pi - margin))
    logits = jnp.where(use_fallback, scale * (cos_y - margin * jnp.sin(margin)), logits)
  if num_classes is not None and num_classes < cos_theta.shape[1]:
    valid = jnp.arange(cos_theta.shape[1]) < num_classes
    logits = jnp.where(valid, logits, -jnp.inf)
    cos_theta = jnp.where(valid, cos_theta, -jnp.inf)
  logit_y = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  loss_arc = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logit_y)
  cr, ccs, nnccs = certainty_ratio(cos_theta, labels, form=cr_form, eps=eps)
  per_sample = smooth_l1(quality, cr if target == "cr" else ccs, beta=beta)
  if sample_weight is not None:
    per_sample = per_sample * jax.lax.stop_gradient(sample_weight)
  loss_cr = jnp.mean(per_sample)
  return LossOutput(loss_arc + lambda_cr * loss_cr, loss_arc, loss_cr, cr, ccs, nnccs)
