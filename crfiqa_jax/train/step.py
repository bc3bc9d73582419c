"""The train state and the one train step (module level, pure, jitted once by the Trainer).

`TrainState` is data only, so it checkpoints and eval_shapes cleanly. `train_step(state,
batch)` computes the ArcFace logits, the masked-max NNCCS and the CR target under
stop-gradient (crfiqa_jax.models.losses) and applies one SGD update; IG-FIQA adds an
augmented copy of the batch for the quality head.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from crfiqa_jax import models, sharding
from crfiqa_jax.models import losses
from crfiqa_jax.train import augment


@flax.struct.dataclass
class TrainState:
  """Everything a step needs and a checkpoint holds; data only."""

  step: jax.Array
  params: Any        # {"backbone": model params, "centres": [D, C_padded]}
  batch_stats: Any
  opt_state: Any
  rng: jax.Array     # raw uint32[2] key; folded with the step each update
  class_ccs: Any = None  # IG-FIQA only: running CCS per class [C_padded] (else None)


def build_model(config) -> models.IResNet:
  return models.create_model(config.model, embedding_dim=config.embedding_dim,
                             dropout=config.dropout, dtype=jnp.dtype(config.dtype),
                             conv_grad=config.get("conv_grad", "auto"))


def init_state(rng, *, model, tx, image_size: int, num_classes: int,
               num_classes_padded: int, method: str = "crfiqa") -> TrainState:
  """Initial TrainState; centres [D, C_padded] ~ N(0, 0.01) (padding drawn separately so the
  real columns do not depend on the padding); IG-FIQA's class_ccs [C_padded] = 1."""
  k_model, k_centres, k_pad, k_state = jax.random.split(rng, 4)
  variables = model.init({"params": k_model, "dropout": k_model},
                         jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  d = model.embedding_dim
  centres = 0.01 * jax.random.normal(k_centres, (d, num_classes))
  if num_classes_padded > num_classes:
    pad = 0.01 * jax.random.normal(k_pad, (d, num_classes_padded - num_classes))
    centres = jnp.concatenate([centres, pad], axis=1)
  params = {"backbone": variables["params"], "centres": centres}
  class_ccs = jnp.ones((num_classes_padded,), jnp.float32) if method == "igfiqa" else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                    rng=k_state, class_ccs=class_ccs)


class IGSettings(NamedTuple):
  """Static IG-FIQA settings of the train step."""

  steps_per_epoch: int
  num_epochs: float             # E of α = 0.9 + 0.1·epoch/E
  backbone_grad: bool = True    # the augmented quality loss also trains the backbone
  augment: augment.AugmentParams = augment.AugmentParams()


def augment_params(config) -> augment.AugmentParams:
  """config.ig_augment (absent in old configs: the defaults) as AugmentParams, checked."""
  given = config.get("ig_augment")
  if given is None:
    return augment.AugmentParams()
  fields = {f.name for f in dataclasses.fields(augment.AugmentParams)}
  unknown = set(given.keys()) - fields
  if unknown:
    raise ValueError(f"config.ig_augment: unknown keys {sorted(unknown)}; known: "
                     f"{sorted(fields)}")
  kw = {k: tuple(float(x) for x in v) if isinstance(v, (tuple, list)) else float(v)
        for k, v in given.items()}
  params = augment.AugmentParams(**kw)
  for k in ("p_rescale", "p_erase", "p_jitter", "p_gray"):
    if not 0.0 <= getattr(params, k) <= 1.0:
      raise ValueError(f"config.ig_augment.{k} must be a probability, got {getattr(params, k)}")
  if not 0.0 < params.min_scale <= 1.0:
    raise ValueError(f"config.ig_augment.min_scale must be in (0, 1], got {params.min_scale}")
  return params


def _quality_head(backbone_params, emb: jax.Array) -> jax.Array:
  """The model's `qs` Dense(1) applied to embeddings [B, D] → [B] (used where the head
  must see a stop-gradient embedding)."""
  qs = backbone_params["qs"]
  return emb @ qs["kernel"][:, 0] + qs["bias"][0]


def train_step(state: TrainState, batch: dict, *, model, tx, schedule, loss_kwargs: dict,
               num_classes: int, logits_sharding=None, ig: IGSettings | None = None,
               frozen_backbone: bool = False,
               batch_augment: augment.AugmentParams | None = None):
  """One SGD step on a global batch {"image": uint8 [B,H,W,3], "label": int32 [B]}.

  CR-FIQA (ig None): one forward of the batch; L = L_Arc + λ·L_CR (losses.crfiqa_loss).
  With batch_augment, the batch is first degraded per image (augment.augment: rescale,
  erase, jitter, grey, each drawn with its probability), for both methods.

  IG-FIQA (ig given): the clean batch and an augmented copy (augment.augment) go through
  the same backbone in training mode; losses.igfiqa_loss takes the ArcFace term from the
  clean embeddings and the weighted regression term from the augmented ones. Only the
  quality head's output carries the augmented pass's gradient: its CR target and the
  class_ccs update are stop-gradient (so the centres learn from clean images only), and
  its BatchNorm running-statistics update is discarded (the running statistics used at
  inference stay those of clean images). With ig.backbone_grad (default) that gradient
  flows through the head into the backbone, as CR-FIQA's quality loss does and as
  IG-FIQA's pseudo-code (no detach) has it; with backbone_grad False the augmented
  embedding is stop-gradient and only `qs` learns from it.

  frozen_backbone ("on top", trainable="qs"): the backbone runs in inference mode (BN
  running statistics, no dropout), its embedding is stop-gradient and batch_stats stay.

  Returns (new_state, metrics) with scalar metrics: loss, loss_arc, loss_cr, cr, ccs, nnccs
  (batch means; ccs and nnccs are the clean batch's for every method, the FR model's health,
  cr is the regression target's, the augmented batch's for IG-FIQA), lr, grad_norm (global
  norm of the raw gradient), and for IG-FIQA ig_weight (mean w), ig_alpha, aug_ccs and
  aug_nnccs (the augmented batch's).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  raw = batch["image"]
  if batch_augment is not None:  # the batch itself degraded (config.augment_batch)
    raw = augment.augment(raw, jax.random.fold_in(rng, 2), batch_augment)
  images = models.normalize(raw)

  def forward(params, x, key):
    """(embedding, quality, new batch_stats) of one pass."""
    variables = {"params": params["backbone"], "batch_stats": state.batch_stats}
    if frozen_backbone:
      emb, _ = model.apply(variables, x, train=False)
      emb = jax.lax.stop_gradient(emb)
      quality, batch_stats = _quality_head(params["backbone"], emb), state.batch_stats
    else:
      (emb, quality), new_vars = model.apply(variables, x, train=True, rngs={"dropout": key},
                                             mutable=["batch_stats"])
      batch_stats = new_vars["batch_stats"]
    if logits_sharding is not None:
      # Partial-FC layout: gather the (small) embeddings, keep centres split by class.
      emb = jax.lax.with_sharding_constraint(emb, sharding.replicated(logits_sharding.mesh))
    return emb, quality, batch_stats

  if ig is None:
    def loss_fn(params):
      emb, quality, batch_stats = forward(params, images, rng)
      out = losses.crfiqa_loss(emb, quality, params["centres"], batch["label"],
                               num_classes=num_classes, logits_sharding=logits_sharding,
                               **loss_kwargs)
      metrics = {"loss_arc": out.loss_arc, "loss_cr": out.loss_cr, "cr": out.cr.mean(),
                 "ccs": out.ccs.mean(), "nnccs": out.nnccs.mean()}
      return out.loss, (metrics, batch_stats, state.class_ccs)
  else:
    k_aug, k_drop_aug = jax.random.split(jax.random.fold_in(rng, 1))
    aug_images = models.normalize(augment.augment(raw, k_aug, ig.augment))
    epoch = (state.step // ig.steps_per_epoch).astype(jnp.float32)
    alpha = 0.9 + 0.1 * epoch / ig.num_epochs

    def loss_fn(params):
      emb, _, batch_stats = forward(params, images, rng)
      aug_emb, aug_quality, _ = forward(params, aug_images, k_drop_aug)  # stats discarded
      if not ig.backbone_grad:
        aug_emb = jax.lax.stop_gradient(aug_emb)
        aug_quality = _quality_head(params["backbone"], aug_emb)
      out, class_ccs, w = losses.igfiqa_loss(
          emb, aug_emb, aug_quality, params["centres"], batch["label"], state.class_ccs,
          alpha=alpha, num_classes=num_classes, logits_sharding=logits_sharding,
          **loss_kwargs)
      ccs, nnccs = _clean_ccs(emb, params["centres"], batch["label"], num_classes,
                              logits_sharding)
      metrics = {"loss_arc": out.loss_arc, "loss_cr": out.loss_cr, "cr": out.cr.mean(),
                 "ccs": ccs.mean(), "nnccs": nnccs.mean(), "aug_ccs": out.ccs.mean(),
                 "aug_nnccs": out.nnccs.mean(), "ig_weight": w.mean(), "ig_alpha": alpha}
      return out.loss, (metrics, batch_stats, class_ccs)

  (loss, (metrics, batch_stats, class_ccs)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**metrics, "loss": loss, "lr": schedule(state.step),
             "grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state, class_ccs=class_ccs), metrics


def _clean_ccs(emb, centres, labels, num_classes: int, logits_sharding):
  """(CCS [B], NNCCS [B]) of the clean batch, stop-gradient: the FR model's own health,
  logged as ccs/nnccs for every method."""
  cos = jnp.clip(losses.cosine_matrix(jax.lax.stop_gradient(emb),
                                      jax.lax.stop_gradient(centres),
                                      sharding=logits_sharding), -1.0, 1.0)
  valid = jnp.arange(cos.shape[1]) < num_classes if num_classes < cos.shape[1] else None
  _, _, ccs, nnccs = losses.quality_target(cos, labels, valid=valid)
  return ccs, nnccs


def loss_kwargs_from_config(config) -> dict:
  return dict(scale=config.scale, margin=config.margin, lambda_cr=config.lambda_cr,
              cr_form=config.cr_form, target=config.target, beta=config.beta, eps=config.eps,
              margin_fallback=config.margin_fallback)
