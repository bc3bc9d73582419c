"""CR-FIQA training: train state, the sharded train step, and the training loop."""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from crfiqa_jax import (augment, checkpointing, input_pipeline, losses, models, optim, sharding,
                        warmstart)
from crfiqa_jax.checkpoints import CHECKPOINTS_DIR, CONFIG_FILE
from crfiqa_jax.data.records import read_info

log = logging.getLogger(__name__)

# Incremented each time train_step is traced (Python runs only at trace time); tests use it
# to assert the step compiles once.
TRACE_COUNT = collections.Counter()


@flax.struct.dataclass
class TrainState:
  """Everything a step needs and a checkpoint holds; data only."""

  step: jax.Array
  params: Any        # {"backbone": model params, "centres": [D, C_padded]}
  batch_stats: Any
  opt_state: Any
  rng: jax.Array     # raw uint32[2] key; folded with the step each update
  class_ccs: Any = None  # IG-FIQA only: running CCS per class [C_padded] (else None)


class NonFiniteLossError(FloatingPointError):
  pass


# ---------------------------------------------------------------------------------------
# Model, optimiser and state construction.
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# The train step (module level, pure).
# ---------------------------------------------------------------------------------------

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
               frozen_backbone: bool = False):
  """One SGD step on a global batch {"image": uint8 [B,H,W,3], "label": int32 [B]}.

  CR-FIQA (ig None): one forward of the batch; L = L_Arc + λ·L_CR (losses.crfiqa_loss).

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
  TRACE_COUNT["train_step"] += 1
  rng = jax.random.fold_in(state.rng, state.step)
  images = models.normalize(batch["image"])

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
      return out.loss, (out, batch_stats, {})
  else:
    k_aug, k_drop_aug = jax.random.split(jax.random.fold_in(rng, 1))
    aug_images = models.normalize(augment.augment(batch["image"], k_aug, ig.augment))
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
      # The FR model's own health on the clean batch (the logged ccs/nnccs of every method).
      cos_clean = jnp.clip(losses.cosine_matrix(jax.lax.stop_gradient(emb),
                                                jax.lax.stop_gradient(params["centres"]),
                                                sharding=logits_sharding), -1.0, 1.0)
      valid = (jnp.arange(cos_clean.shape[1]) < num_classes
               if num_classes < cos_clean.shape[1] else None)
      _, _, ccs, nnccs = losses.quality_target(cos_clean, batch["label"], valid=valid)
      return out.loss, (out, batch_stats, {"class_ccs": class_ccs, "ig_weight": w.mean(),
                                           "ccs": ccs.mean(), "nnccs": nnccs.mean()})

  (_, (out, batch_stats, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": out.loss, "loss_arc": out.loss_arc, "loss_cr": out.loss_cr,
             "cr": out.cr.mean(), "ccs": out.ccs.mean(), "nnccs": out.nnccs.mean(),
             "lr": schedule(state.step), "grad_norm": optax.global_norm(grads)}
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  if ig is not None:
    metrics.update(ig_weight=extra["ig_weight"], ig_alpha=alpha, aug_ccs=metrics["ccs"],
                   aug_nnccs=metrics["nnccs"], ccs=extra["ccs"], nnccs=extra["nnccs"])
    new_state = new_state.replace(class_ccs=extra["class_ccs"])
  return new_state, metrics


def loss_kwargs_from_config(config) -> dict:
  return dict(scale=config.scale, margin=config.margin, lambda_cr=config.lambda_cr,
              cr_form=config.cr_form, target=config.target, beta=config.beta, eps=config.eps,
              margin_fallback=config.margin_fallback)


class Trainer:
  """Builds model, optimiser, mesh, shardings and the jitted step for one config.

  Attributes after construction: mesh, model, tx, schedule, num_classes,
  num_classes_padded, steps_per_epoch, total_steps, state_shardings, step_fn (jitted).
  """

  def __init__(self, config, *, num_classes: int, num_examples: int, mesh=None):
    self.config = config
    self.mesh = sharding.make_mesh() if mesh is None else mesh
    self.local_batch = sharding.check_batch_size(config.batch_size, self.mesh)
    self.num_classes = num_classes
    self.num_classes_padded = sharding.padded_num_classes(num_classes, self.mesh,
                                                          config.shard_centres)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(num_examples, config.batch_size)
    self.total_steps = config.total_steps or config.num_epochs * self.steps_per_epoch
    peak = optim.learning_rate(config.lr, config.batch_size)
    self.schedule = optim.step_schedule(peak, self.steps_per_epoch, config.lr_decay_epochs)
    self.tx = optim.make_optimizer(self.schedule, momentum=config.momentum,
                                   weight_decay=config.weight_decay,
                                   clip_norm=config.clip_norm, trainable=config.trainable)
    self.model = build_model(config)
    warmstart.check_on_top(config)
    if config.method not in ("crfiqa", "igfiqa"):
      raise ValueError(f"method must be 'crfiqa' or 'igfiqa', got {config.method!r}")
    ig = None
    if config.method == "igfiqa":
      ig = IGSettings(steps_per_epoch=self.steps_per_epoch,
                      num_epochs=max(1.0, self.total_steps / self.steps_per_epoch),
                      backbone_grad=config.ig_backbone_grad,
                      augment=augment_params(config))
    self._init = functools.partial(init_state, model=self.model, tx=self.tx,
                                   image_size=config.image_size, num_classes=num_classes,
                                   num_classes_padded=self.num_classes_padded,
                                   method=config.method)
    rng = jax.random.PRNGKey(config.seed)
    self.abstract_state = jax.eval_shape(self._init, rng)
    self.state_shardings = sharding.state_shardings(self.abstract_state, self.mesh,
                                                    config.shard_centres)
    repl = sharding.replicated(self.mesh)
    step = functools.partial(
        train_step, model=self.model, tx=self.tx, schedule=self.schedule,
        loss_kwargs=loss_kwargs_from_config(config), num_classes=num_classes,
        logits_sharding=(sharding.class_sharding(self.mesh) if config.shard_centres
                         else None), ig=ig,
        frozen_backbone=config.trainable == "qs")
    batch_sh = sharding.batch_sharding(self.mesh)
    self.step_fn = jax.jit(step, in_shardings=(self.state_shardings, batch_sh),
                           out_shardings=(self.state_shardings, repl), donate_argnums=0)

  def init(self) -> TrainState:
    rng = jax.random.PRNGKey(self.config.seed)
    return jax.jit(self._init, out_shardings=self.state_shardings)(rng)

  def abstract_target(self):
    return checkpointing.abstract_with_shardings(self.abstract_state, self.state_shardings)


# ---------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------

def _check_finite(step: int, metrics: dict):
  bad = [k for k in ("loss", "loss_arc", "loss_cr", "grad_norm")
         if not math.isfinite(float(metrics[k]))]
  if bad:
    raise NonFiniteLossError(
        f"Non-finite {', '.join(bad)} at step {step} ({ {k: float(metrics[k]) for k in bad} }). "
        "Lower --config.lr, check the data, or resume from the last checkpoint.")


def dataset_facts(config) -> tuple[int, int]:
  """(num_classes, num_train_examples) from the dataset's info, with clear errors."""
  if not config.data_dir:
    raise ValueError("config.data_dir is empty: pass --config.data_dir=PATH to a dataset "
                     "written by `python -m crfiqa_jax.prepare`")
  where = f"--config.data_dir={config.data_dir}"
  if not Path(config.data_dir).exists():
    raise FileNotFoundError(f"{where} does not exist; create it with "
                            "`python -m crfiqa_jax.prepare ...`")
  try:
    info = read_info(config.data_dir)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"{where}: {e}") from None
  n_train = info["splits"].get("train", 0)
  if not n_train:
    raise ValueError(f"{where} has no 'train' split (splits: {info['splits']})")
  for key, got in (("paper_num_classes", info["num_classes"]), ("paper_num_examples", n_train)):
    want = config.get(key, 0)
    if want and want != got:
      log.warning("%s has %d %s, the paper's dataset has %d: training on it anyway",
                  config.data_dir, got, key.split("_", 2)[2], want)
  return int(info["num_classes"]), int(n_train)


# Config fields that must agree between a workdir's checkpoints and a run resuming them.
RESUME_KEYS = ("model", "embedding_dim", "image_size", "method", "num_classes")


def check_resume_config(config, workdir) -> None:
  """On resume, the workdir's config must describe the same model and data (one line,
  naming the key to change); a fresh workdir passes."""
  workdir = Path(workdir)
  saved = workdir / CONFIG_FILE
  if not saved.exists() or not (workdir / CHECKPOINTS_DIR).exists():
    return
  old = json.loads(saved.read_text())
  now = {k: config[k] for k in RESUME_KEYS if k in config}
  now["num_classes"] = dataset_facts(config)[0]
  for key in RESUME_KEYS:
    if key in old and key in now and old[key] != now[key]:
      if key == "num_classes":
        raise ValueError(f"{workdir} holds checkpoints trained on {old[key]} classes; "
                         f"--config.data_dir={config.data_dir} has {now[key]}: use that "
                         "run's data_dir, or a fresh --workdir")
      raise ValueError(f"{workdir} holds checkpoints trained with {key}={old[key]!r}; this run "
                       f"has {key}={config[key]!r}: pass --config.{key}={old[key]!r} to resume, "
                       "or use a fresh --workdir")


def train(config: ml_collections.ConfigDict, workdir: str, *, mesh=None) -> TrainState:
  """Trains per `config`, checkpointing to and resuming from `workdir`; returns the state.

  `mesh` defaults to every device of every process; a checkpoint written on one device
  count resumes on another (checkpointing.restore)."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  check_resume_config(config, workdir)

  # --- Data facts, mesh, model, optimiser, jitted step. ---
  num_classes, num_examples = dataset_facts(config)
  if is_main:  # lets score/evaluate/analyze rebuild the model from a workdir alone
    saved = json.loads(config.to_json_best_effort())
    (workdir / CONFIG_FILE).write_text(json.dumps({**saved, "num_classes": num_classes},
                                                    indent=1))
  trainer = Trainer(config, num_classes=num_classes, num_examples=num_examples, mesh=mesh)
  if is_main:
    log.info("devices=%d processes=%d model=%s classes=%d (padded %d) examples=%d "
             "steps/epoch=%d total_steps=%d peak_lr=%.4g", trainer.mesh.size,
             jax.process_count(), config.model, num_classes, trainer.num_classes_padded,
             num_examples, trainer.steps_per_epoch, trainer.total_steps,
             trainer.schedule(0))

  # --- Input. ---
  data_iter = iter(input_pipeline.train_dataset(
      config.data_dir, local_batch=trainer.local_batch, seed=config.seed,
      image_size=config.image_size, flip=config.flip, worker_count=config.data_workers))

  # --- State: restore or init. ---
  mgr = checkpointing.manager(workdir, max_to_keep=config.keep_checkpoints,
                              save_interval_steps=config.checkpoint_every)
  if mgr.latest_step() is not None:
    state = checkpointing.restore(mgr, trainer.abstract_target(), data_iter)
    if is_main:
      log.info("Resumed from %s at step %d", mgr.directory, int(state.step))
  else:
    state = trainer.init()
    if config.init_checkpoint:
      state = warmstart.load_init(state, config, trainer)

  # --- Loop. ---
  writer = open(workdir / "metrics.jsonl", "a") if is_main else None
  step = int(state.step)
  pending = None
  t0, n0 = time.perf_counter(), step
  try:
    while step < trainer.total_steps:
      batch = sharding.global_batch(next(data_iter), trainer.mesh)
      state, metrics = trainer.step_fn(state, batch)
      step += 1
      if pending is not None:  # check the previous step while this one runs
        _check_finite(*pending)
      pending = (step, metrics)
      if step % config.log_every == 0 or step == trainer.total_steps:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(step, m)
        dt = time.perf_counter() - t0
        m["images_per_s"] = (step - n0) * config.batch_size / max(dt, 1e-9)
        t0, n0 = time.perf_counter(), step
        if is_main:
          eta = (trainer.total_steps - step) * config.batch_size / max(m["images_per_s"], 1e-9)
          log.info("step %d/%d loss %.3f (arc %.3f cr %.4f) CR %.3f CCS %.3f NNCCS %.3f "
                   "lr %.3g |g| %.2f %.0f img/s eta %.0fs", step, trainer.total_steps,
                   m["loss"], m["loss_arc"], m["loss_cr"], m["cr"], m["ccs"], m["nnccs"],
                   m["lr"], m["grad_norm"], m["images_per_s"], eta)
          writer.write(json.dumps({"step": step, **m}) + "\n")
          writer.flush()
      checkpointing.save(mgr, step, state, data_iter)
    if pending is not None:
      _check_finite(*pending)
    checkpointing.save(mgr, step, state, data_iter, force=mgr.latest_step() != step)
  finally:
    mgr.wait_until_finished()
    if writer:
      writer.close()
    close = getattr(data_iter, "close", None)
    if close:
      close()
  return state


def as_numpy(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))
