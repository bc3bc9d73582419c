"""CR-FIQA training: train state, the sharded train step, and the training loop."""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from crfiqa_jax import checkpointing, input_pipeline, losses, models, optim, sharding
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


class NonFiniteLossError(FloatingPointError):
  pass


# ---------------------------------------------------------------------------------------
# Model, optimiser and state construction.
# ---------------------------------------------------------------------------------------

def build_model(config) -> models.IResNet:
  return models.create_model(config.model, embedding_dim=config.embedding_dim,
                             dropout=config.dropout, dtype=jnp.dtype(config.dtype))


def init_state(rng, *, model, tx, image_size: int, num_classes: int,
               num_classes_padded: int) -> TrainState:
  """Initial TrainState; centres [D, C_padded] ~ N(0, 0.01) (padding drawn separately so the
  real columns do not depend on the padding)."""
  k_model, k_centres, k_pad, k_state = jax.random.split(rng, 4)
  variables = model.init({"params": k_model, "dropout": k_model},
                         jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  d = model.embedding_dim
  centres = 0.01 * jax.random.normal(k_centres, (d, num_classes))
  if num_classes_padded > num_classes:
    pad = 0.01 * jax.random.normal(k_pad, (d, num_classes_padded - num_classes))
    centres = jnp.concatenate([centres, pad], axis=1)
  params = {"backbone": variables["params"], "centres": centres}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                    rng=k_state)


def load_init(state: TrainState, config, shardings) -> TrainState:
  """Replaces the backbone (and BN statistics) of a fresh state by those of
  `config.init_checkpoint` (.pth, exported model or training workdir); the class centres
  and optimiser state stay fresh. For fine-tuning and the paper's "on top" ablation."""
  from crfiqa_jax import convert
  _, variables, info = convert.load_model(config.init_checkpoint, config.model)
  if info["arch"] != config.model or info["embedding_dim"] != config.embedding_dim:
    raise ValueError(f"init_checkpoint {config.init_checkpoint} is {info['arch']} "
                     f"(embedding {info['embedding_dim']}), the config wants {config.model} "
                     f"(embedding {config.embedding_dim})")
  want = jax.tree.map(lambda x: (x.shape, x.dtype), (state.params["backbone"],
                                                     state.batch_stats))
  got = jax.tree.map(lambda x: (tuple(np.shape(x)), jnp.asarray(x).dtype),
                     (variables["params"], variables["batch_stats"]))
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise ValueError(f"init_checkpoint {config.init_checkpoint} does not fit the model of this "
                     "config (parameter shapes differ; check image_size and embedding_dim)")
  new = state.replace(params={**state.params, "backbone": variables["params"]},
                      batch_stats=variables["batch_stats"])
  log.info("Initialised the backbone from %s", info.get("source", config.init_checkpoint))
  return jax.device_put(new, shardings)


# ---------------------------------------------------------------------------------------
# The train step (module level, pure).
# ---------------------------------------------------------------------------------------

def train_step(state: TrainState, batch: dict, *, model, tx, schedule, loss_kwargs: dict,
               num_classes: int, embedding_sharding=None, margin_ramp_steps: int = 0):
  """One SGD step on a global batch {"image": uint8 [B,H,W,3], "label": int32 [B]}.

  Returns (new_state, metrics) with scalar metrics: loss, loss_arc, loss_cr, cr, ccs, nnccs
  (batch means), lr, grad_norm (global norm of the raw gradient).
  """
  TRACE_COUNT["train_step"] += 1
  rng = jax.random.fold_in(state.rng, state.step)
  images = input_pipeline.normalize(batch["image"])
  if margin_ramp_steps:  # demo only: ArcFace margin m·min(1, step/ramp), see configs/demo.py
    ramp = jnp.minimum(1.0, state.step.astype(jnp.float32) / margin_ramp_steps)
    loss_kwargs = {**loss_kwargs, "margin": loss_kwargs["margin"] * ramp}

  def loss_fn(params):
    (emb, quality), new_vars = model.apply(
        {"params": params["backbone"], "batch_stats": state.batch_stats}, images, train=True,
        rngs={"dropout": rng}, mutable=["batch_stats"])
    if embedding_sharding is not None:
      # Partial-FC layout: gather the (small) embeddings, keep centres split by class.
      emb = jax.lax.with_sharding_constraint(emb, embedding_sharding)
    out = losses.crfiqa_loss(emb, quality, params["centres"], batch["label"],
                             num_classes=num_classes, **loss_kwargs)
    return out.loss, (out, new_vars["batch_stats"])

  (_, (out, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": out.loss, "loss_arc": out.loss_arc, "loss_cr": out.loss_cr,
             "cr": out.cr.mean(), "ccs": out.ccs.mean(), "nnccs": out.nnccs.mean(),
             "lr": schedule(state.step), "grad_norm": optax.global_norm(grads)}
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
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
    self.schedule = optim.with_warmup(  # demo only; the released recipe has none
        self.schedule, int(round(config.get("warmup_epochs", 0) * self.steps_per_epoch)))
    self.tx = optim.make_optimizer(self.schedule, momentum=config.momentum,
                                   weight_decay=config.weight_decay,
                                   clip_norm=config.clip_norm, trainable=config.trainable)
    self.model = build_model(config)
    self._init = functools.partial(init_state, model=self.model, tx=self.tx,
                                   image_size=config.image_size, num_classes=num_classes,
                                   num_classes_padded=self.num_classes_padded)
    rng = jax.random.PRNGKey(config.seed)
    self.abstract_state = jax.eval_shape(self._init, rng)
    self.state_shardings = sharding.state_shardings(self.abstract_state, self.mesh,
                                                    config.shard_centres)
    repl = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    step = functools.partial(
        train_step, model=self.model, tx=self.tx, schedule=self.schedule,
        loss_kwargs=loss_kwargs_from_config(config), num_classes=num_classes,
        embedding_sharding=repl if config.shard_centres else None,
        margin_ramp_steps=int(round(config.get("margin_ramp_epochs", 0) * self.steps_per_epoch)))
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
  if not Path(config.data_dir).exists():
    raise FileNotFoundError(f"data_dir {config.data_dir} does not exist; create it with "
                            "`python -m crfiqa_jax.prepare ...`")
  info = read_info(config.data_dir)
  n_train = info["splits"].get("train", 0)
  if not n_train:
    raise ValueError(f"{config.data_dir} has no 'train' split (splits: {info['splits']})")
  for key, got in (("paper_num_classes", info["num_classes"]), ("paper_num_examples", n_train)):
    want = config.get(key, 0)
    if want and want != got:
      log.warning("%s has %d %s, the paper's dataset has %d: training on it anyway",
                  config.data_dir, got, key.split("_", 2)[2], want)
  return int(info["num_classes"]), int(n_train)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """The main job: synthetic data if the config asks for it, training, then the ERC
  evaluation of `config.eval_data_dir` (if set) into workdir/eval."""
  started = time.perf_counter()
  if config.synthetic:
    from crfiqa_jax.data import synthetic
    if not config.data_dir:
      with config.unlocked():
        config.data_dir = str(Path(workdir) / "data")
        config.eval_data_dir = config.eval_data_dir or config.data_dir
    if jax.process_index() == 0:
      synthetic.ensure_dataset(config)
  state = train(config, workdir)
  if config.eval_data_dir and jax.process_index() == 0:
    from crfiqa_jax import evaluate
    m = evaluate.evaluate_checkpoint_state(state, config, Path(workdir) / "eval",
                                           started=started)
    _print_summary(m, Path(workdir) / "eval")
  return state


def _print_summary(m: dict, out_dir: Path):
  auc = m["erc_auc"]
  lines = [
      "",
      f"Held-out evaluation ({m['num_identities']} unseen identities, {m['num_images']} images, "
      f"{m['num_pairs']:,} pairs) after {m['train_steps']} steps, {m['wall_seconds']:.0f} s:",
      f"  Spearman(predicted quality, true degradation severity) = "
      f"{m['spearman_quality_vs_severity']:+.3f}  (-1 = perfect, 0 = no relation)",
  ]
  for mode in auc:
    for f, r in auc[mode].items():
      gain = 1 - r["learned"] / r["random"] if r["random"] else float("nan")
      lines.append(f"  ERC AUC [{mode:10s} FMR={f}] learned {r['learned']:.4f}  random "
                   f"{r['random']:.4f}  oracle {r['oracle']:.4f}  → {100 * gain:.0f}% below "
                   "random")
  lines.append(f"  Lower AUC = rejecting the lowest-quality pairs removes more errors. "
               f"Plot: {out_dir / 'erc.png'}; numbers: {out_dir / 'metrics.json'}")
  print("\n".join(lines), flush=True)


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per `config`, checkpointing to and resuming from `workdir`; returns the state."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:  # lets score/evaluate rebuild the model from a workdir alone
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))

  # --- Data facts, mesh, model, optimiser, jitted step. ---
  num_classes, num_examples = dataset_facts(config)
  trainer = Trainer(config, num_classes=num_classes, num_examples=num_examples)
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
      state = load_init(state, config, trainer.state_shardings)

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


def predict_fn(model):
  """Jitted eval-mode forward: (variables, uint8 or float images) → (embedding, quality)."""

  @jax.jit
  def predict(variables, images):
    x = input_pipeline.normalize(images) if images.dtype == jnp.uint8 else images
    return model.apply(variables, x, train=False)

  return predict


def inference_variables(state: TrainState) -> dict:
  return {"params": state.params["backbone"], "batch_stats": state.batch_stats}


def as_numpy(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))
