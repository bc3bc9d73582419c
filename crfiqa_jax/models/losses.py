"""CR-FIQA losses (paper eqs. 1-6): pure array functions.

Shapes: B = batch, C = classes, D = embedding size. `cos_theta` is the [B, C] matrix of
cosines between L2-normalised embeddings and L2-normalised class centres.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
  loss_cr: jax.Array    # scalar (mean, weighted for IG-FIQA, smooth L1 before λ)
  cr: jax.Array         # [B]
  ccs: jax.Array        # [B]
  nnccs: jax.Array      # [B]


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(‖x‖₂, eps) along `axis`. numpy in, numpy out; a jax array (or a tracer inside
  jit) in, jax out. Every L2 normalisation of the package (embeddings, centres, FR
  features, template features) goes through here."""
  xp = jnp if isinstance(x, jax.Array) else np
  return x / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps)


def cosine_matrix(embedding: jax.Array, centres: jax.Array, *, sharding=None) -> jax.Array:
  """cos θ between rows of `embedding` [B, D] and columns of `centres` [D, C] → [B, C].

  sharding: optional layout of the result (and, through autodiff, of its cotangent), e.g.
  split along classes like class-sharded centres. Pinning it keeps XLA from gathering
  the centres to every device to form the embeddings' gradient (all C columns per device,
  seen in XLA's choice without it); with it that gradient is a sum of per-device partial
  products.
  """
  cos = l2_normalize(embedding, axis=1) @ l2_normalize(centres, axis=0)
  return cos if sharding is None else jax.lax.with_sharding_constraint(cos, sharding)


def _valid_columns(num_columns: int, num_classes: int | None) -> jax.Array | None:
  """[C'] mask of the real classes, or None when there is no padding."""
  if num_classes is None or num_classes >= num_columns:
    return None
  return jnp.arange(num_columns) < num_classes


def arcface_loss(cos_theta: jax.Array, labels: jax.Array, *, scale: float, margin: float,
                 margin_fallback: bool = False, valid: jax.Array | None = None) -> jax.Array:
  """Mean ArcFace cross-entropy over the batch (eq. 1) from clipped cosines [B, C'].

  margin_fallback: insightface's guard for θ_y + m > π, where cos θ_y ≤ cos(π - m) the
  target logit becomes s·(cos θ_y - m·sin m) (monotonic in θ_y). `valid` masks padding
  columns out of the softmax.
  """
  logits = arcface_logits(cos_theta, labels, scale=scale, margin=margin)
  if margin_fallback:
    cos_y = jnp.take_along_axis(cos_theta, labels[:, None], axis=1)
    is_target = jnp.arange(cos_theta.shape[1])[None, :] == labels[:, None]
    # jnp, not math: the margin is a traced array under a margin ramp (configs/demo.py).
    use_fallback = is_target & (cos_y <= jnp.cos(math.pi - margin))
    logits = jnp.where(use_fallback, scale * (cos_y - margin * jnp.sin(margin)), logits)
  if valid is not None:
    logits = jnp.where(valid, logits, -jnp.inf)
  logit_y = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logit_y)


def quality_target(cos_theta: jax.Array, labels: jax.Array, *, target: str = "cr",
                   cr_form: str = "paper", eps: float = 1e-9,
                   valid: jax.Array | None = None):
  """(regression target, cr, ccs, nnccs), each [B], under stop-gradient; padding columns
  (`valid` False) never count as the nearest negative class."""
  if target not in ("cr", "ccs"):
    raise ValueError(f"target must be 'cr' or 'ccs', got {target!r}")
  if valid is not None:
    cos_theta = jnp.where(valid, cos_theta, -jnp.inf)
  cr, ccs, nnccs = certainty_ratio(cos_theta, labels, form=cr_form, eps=eps)
  return (cr if target == "cr" else ccs), cr, ccs, nnccs


def crfiqa_loss(embedding: jax.Array, quality: jax.Array, centres: jax.Array,
                labels: jax.Array, *, scale: float = 64.0, margin: float = 0.5,
                lambda_cr: float = 10.0, cr_form: str = "paper", target: str = "cr",
                beta: float = 0.5, eps: float = 1e-9, num_classes: int | None = None,
                sample_weight: jax.Array | None = None,
                margin_fallback: bool = False, logits_sharding=None) -> LossOutput:
  """Total CR-FIQA loss (eq. 6): L = L_Arc + λ·mean(smooth_l1(quality, target)).

  Args:
    embedding: [B, D] un-normalised embeddings.
    quality: [B] regression output.
    centres: [D, C'] class centres (C' ≥ num_classes; columns past num_classes are padding
      that lets the class axis be sharded evenly and are ignored).
    labels: [B] integer labels in [0, num_classes).
    target: "cr" (CR-FIQA) or "ccs" (the paper's CCS-FIQA ablation).
    num_classes: number of real classes; None = all columns of `centres`.
    sample_weight: optional [B] weights of the regression term (no gradient).
    margin_fallback: insightface's guard for θ_y + m > π (see `arcface_loss`). The
      released CR-FIQA code has no such guard (default off); small models on few classes
      can otherwise collapse to embeddings far from every centre.
    logits_sharding: optional layout of the [B, C'] cosines (`cosine_matrix`).
  """
  cos_theta = jnp.clip(cosine_matrix(embedding, centres, sharding=logits_sharding), -1.0, 1.0)
  valid = _valid_columns(cos_theta.shape[1], num_classes)
  loss_arc = arcface_loss(cos_theta, labels, scale=scale, margin=margin,
                          margin_fallback=margin_fallback, valid=valid)
  tgt, cr, ccs, nnccs = quality_target(cos_theta, labels, target=target, cr_form=cr_form,
                                       eps=eps, valid=valid)
  per_sample = smooth_l1(quality, tgt, beta=beta)
  if sample_weight is not None:
    per_sample = per_sample * jax.lax.stop_gradient(sample_weight)
  loss_cr = jnp.mean(per_sample)
  return LossOutput(loss_arc + lambda_cr * loss_cr, loss_arc, loss_cr, cr, ccs, nnccs)


# ---------------------------------------------------------------------------------------
# IG-FIQA (the IG-FIQA paper and the pseudo-code in its README).
# ---------------------------------------------------------------------------------------

def igfiqa_update(class_ccs: jax.Array, ccs: jax.Array, labels: jax.Array, *,
                  alpha) -> jax.Array:
  """One step of IG-FIQA's per-class running CCS v [C].

  For every class c present in the batch, with m_c = mean of the batch's CCS of class c
  (a class repeated in the batch contributes the mean of its samples, so the result does
  not depend on their order):
      v_c ← α·v_c + (1 - α)·m_c;
  classes absent from the batch keep v_c. The per-class sums are a one-hot contraction
  (deterministic on every backend, unlike a scatter-add, and split along classes when v
  and the centres are). No gradient flows.

  Args:
    class_ccs: [C] running values (C may include padding classes; labels never hit them).
    ccs: [B] cosine similarity of each sample to its own class centre.
    labels: [B] integer labels.
    alpha: momentum, scalar (IG-FIQA: 0.9 + 0.1·epoch/E).
  Returns:
    [C] updated running values.
  """
  class_ccs = jax.lax.stop_gradient(class_ccs)
  ccs = jax.lax.stop_gradient(ccs).astype(class_ccs.dtype)
  one_hot = jax.nn.one_hot(labels, class_ccs.shape[0], dtype=class_ccs.dtype)  # [B, C]
  counts = one_hot.sum(axis=0)
  sums = jnp.einsum("bc,b->c", one_hot, ccs, precision=jax.lax.Precision.HIGHEST)
  batch_mean = sums / jnp.maximum(counts, 1.0)
  return jnp.where(counts > 0, alpha * class_ccs + (1.0 - alpha) * batch_mean, class_ccs)


def igfiqa_weights(class_ccs: jax.Array, labels: jax.Array, *,
                   num_classes: int | None = None) -> jax.Array:
  """IG-FIQA per-sample regression weights w [B] in [0, 1].

      z_i = (v_{y_i} - mean(v)) / (std(v) + 1e-6),   w_i = 1 + clip(z_i, -1, 0),

  mean and (population, ddof 0) std over the first `num_classes` entries of v, the real
  classes; trailing padding entries (default: none) are ignored. Samples of classes whose
  running CCS is at or above the mean get weight 1; a class one std or more below gets 0.
  No gradient flows.
  """
  v = jax.lax.stop_gradient(class_ccs)
  n = v.shape[0] if num_classes is None else num_classes
  valid = _valid_columns(v.shape[0], num_classes)
  real = v if valid is None else jnp.where(valid, v, 0.0)
  mean = real.sum() / n
  dev = v - mean
  var = (dev * dev if valid is None else jnp.where(valid, dev * dev, 0.0)).sum() / n
  z = (v[labels] - mean) / (jnp.sqrt(var) + 1e-6)
  return 1.0 + jnp.clip(z, -1.0, 0.0)


def igfiqa_loss(embedding: jax.Array, aug_embedding: jax.Array, aug_quality: jax.Array,
                centres: jax.Array, labels: jax.Array, class_ccs: jax.Array, *, alpha,
                scale: float = 64.0, margin: float = 0.5, lambda_cr: float = 10.0,
                cr_form: str = "paper", target: str = "cr", beta: float = 0.5,
                eps: float = 1e-9, num_classes: int | None = None,
                margin_fallback: bool = False,
                logits_sharding=None) -> tuple[LossOutput, jax.Array, jax.Array]:
  """IG-FIQA: L = L_Arc(clean) + λ·mean_i(w_i·smooth_l1(q̃_i, CR̃_i)).

  The ArcFace term sees the clean embeddings [B, D] only. The augmented copy's embeddings
  `aug_embedding` [B, D] give the (stop-gradient) CCS/NNCCS against the same centres: the
  regression target CR̃ and the CCS that updates v (`igfiqa_update`, momentum `alpha`);
  the weights w come from the UPDATED v (`igfiqa_weights`), as IG-FIQA's pseudo-code.
  `aug_quality` [B] is the quality head's output on the augmented images.

  Returns:
    (LossOutput whose cr/ccs/nnccs are the augmented batch's, new class_ccs [C'], w [B]).
  """
  cos_theta = jnp.clip(cosine_matrix(embedding, centres, sharding=logits_sharding), -1.0, 1.0)
  valid = _valid_columns(cos_theta.shape[1], num_classes)
  loss_arc = arcface_loss(cos_theta, labels, scale=scale, margin=margin,
                          margin_fallback=margin_fallback, valid=valid)
  cos_aug = jnp.clip(cosine_matrix(jax.lax.stop_gradient(aug_embedding),
                                   jax.lax.stop_gradient(centres), sharding=logits_sharding),
                     -1.0, 1.0)
  tgt, cr, ccs, nnccs = quality_target(cos_aug, labels, target=target, cr_form=cr_form,
                                       eps=eps, valid=valid)
  new_ccs = igfiqa_update(class_ccs, ccs, labels, alpha=alpha)
  w = igfiqa_weights(new_ccs, labels, num_classes=num_classes)
  loss_cr = jnp.mean(w * smooth_l1(aug_quality, tgt, beta=beta))
  out = LossOutput(loss_arc + lambda_cr * loss_cr, loss_arc, loss_cr, cr, ccs, nnccs)
  return out, new_ccs, w
