"""The Trainer (model, optimiser, mesh, shardings and the jitted step for one config) and
`train`, which runs one training job from data to the last checkpoint.

    state = train(config, workdir)   # resumes from workdir's newest readable checkpoint

Every step is one call of the jitted `guarded_step` (the one `step.train_step` with the
loop's two flags) on a global batch split over the "data" mesh axis; crfiqa_jax.train.loop
runs the steps, reads each step's metrics while the next one runs, logs them and saves
the train state with the data position (crfiqa_jax.train.checkpoint).

Faults (docs/faults.md):
* SIGTERM/SIGINT (crfiqa_jax.faults): each process puts its stop request into the next
  batch it feeds (a "stop" flag per example); the step reduces it over every device of every
  process into its metrics, so all processes read the same answer for the same step and
  stop together one step later, with no sync point of their own. They save that step with
  the data position and `train` raises cli.Stopped.
* A non-finite loss or gradient norm: with nan_policy "stop" the loop raises
  NonFiniteLossError (cli.Diverged) naming the step and the metric, and the newest
  checkpoint is one whose metrics and state were found finite. With "skip_step" the step's
  update is dropped inside the jitted step (the step counter and the data still advance),
  counted and logged; more than loop.MAX_SKIPS_IN_A_ROW in a row is divergence.
* A full disk: checkpoint, config and metrics writes raise crfiqa_jax.faults.DiskFull.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from crfiqa_jax import cli, faults, sharding
from crfiqa_jax.data.records import read_info
from crfiqa_jax.serve.model_io import CHECKPOINTS_DIR, CONFIG_FILE
from crfiqa_jax.train import checkpoint, input_pipeline, optim, warmstart
from crfiqa_jax.train.loop import (  # noqa: F401 - NonFiniteLossError: part of this API
    METRICS_FILE, Loop, MetricsFile, NonFiniteLossError)
from crfiqa_jax.train.step import (IGSettings, TrainState, augment_params, build_model,
                                   init_state, loss_kwargs_from_config, train_step)

log = logging.getLogger(__name__)


NAN_POLICIES = ("stop", "skip_step")


class Trainer:
  """Builds model, optimiser, mesh, shardings and the jitted step for one config.

  Attributes after construction: mesh, model, tx, schedule, num_classes,
  num_classes_padded, steps_per_epoch, total_steps, state_shardings, step_fn (jitted
  `guarded_step`: (state, batch) → (state, metrics)), all_finite (jitted: state → bool).
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
    if config.get("nan_policy", "stop") not in NAN_POLICIES:
      raise ValueError(f"--config.nan_policy={config.nan_policy!r}; choose one of "
                       f"{NAN_POLICIES}")
    repl = sharding.replicated(self.mesh)
    step = functools.partial(
        train_step, model=self.model, tx=self.tx, schedule=self.schedule,
        loss_kwargs=loss_kwargs_from_config(config), num_classes=num_classes,
        logits_sharding=(sharding.class_sharding(self.mesh) if config.shard_centres
                         else None), ig=ig,
        frozen_backbone=config.trainable == "qs",
        batch_augment=augment_params(config) if config.get("augment_batch") else None)
    step = functools.partial(guarded_step, step=step,
                             skip_nonfinite=config.get("nan_policy", "stop") == "skip_step")
    batch_sh = sharding.batch_sharding(self.mesh)
    self.step_fn = jax.jit(step, in_shardings=(self.state_shardings, batch_sh),
                           out_shardings=(self.state_shardings, repl), donate_argnums=0)
    self.all_finite = jax.jit(_all_finite, out_shardings=repl)

  def init(self) -> TrainState:
    rng = jax.random.PRNGKey(self.config.seed)
    return jax.jit(self._init, out_shardings=self.state_shardings)(rng)

  def abstract_target(self):
    return checkpoint.abstract_with_shardings(self.abstract_state, self.state_shardings)


def guarded_step(state: TrainState, batch: dict, *, step, skip_nonfinite: bool):
  """`step(state, batch)` with the loop's two flags. batch["stop"] (int8 [B], optional):
  the feeding process's stop request per example, reduced over the global batch into
  metrics["stop"]. With `skip_nonfinite` a step whose loss, gradient norm or new state is
  not finite keeps the old state (but advances the step counter) and sets
  metrics["skipped"] to 1."""
  batch = dict(batch)
  stop = batch.pop("stop", None)
  new, metrics = step(state, batch)
  if skip_nonfinite:
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & _all_finite(new)
    new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state).replace(step=new.step)
    metrics = {**metrics, "skipped": (~ok).astype(jnp.int32)}
  if stop is not None:
    metrics = {**metrics, "stop": jnp.max(stop).astype(jnp.int32)}
  return new, metrics


def _all_finite(tree) -> jax.Array:
  """Whether every floating-point value of `tree` is finite (a scalar bool)."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)



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


def check_resume_config(config, workdir, num_classes: int) -> None:
  """On resume, the workdir's config must describe the same model and data (one line,
  naming the key to change); a fresh workdir passes. num_classes: the data's
  (`dataset_facts`)."""
  workdir = Path(workdir)
  saved = workdir / CONFIG_FILE
  if not saved.exists() or not (workdir / CHECKPOINTS_DIR).exists():
    return
  old = json.loads(saved.read_text())
  now = {k: config[k] for k in RESUME_KEYS if k in config}
  now["num_classes"] = num_classes
  for key in RESUME_KEYS:
    if key in old and key in now and old[key] != now[key]:
      if key == "num_classes":
        raise ValueError(f"{workdir} holds checkpoints trained on {old[key]} classes; "
                         f"--config.data_dir={config.data_dir} has {now[key]}: use that "
                         "run's data_dir, or a fresh --workdir")
      raise ValueError(f"{workdir} holds checkpoints trained with {key}={old[key]!r}; this run "
                       f"has {key}={config[key]!r}: pass --config.{key}={old[key]!r} to resume, "
                       "or use a fresh --workdir")


def preflight(config, workdir) -> tuple[int, int]:
  """The checks of the data and of a resumed workdir, run once before anything is built:
  (num_classes, num_train_examples)."""
  facts = dataset_facts(config)
  check_resume_config(config, workdir, facts[0])
  return facts


def train(config: ml_collections.ConfigDict, workdir: str, *, mesh=None,
          facts: tuple[int, int] | None = None) -> TrainState:
  """Trains per `config`, checkpointing to and resuming from `workdir`; returns the state.

  `mesh` defaults to every device of every process; a checkpoint written on one device
  count resumes on another (crfiqa_jax.train.checkpoint). `facts`: `preflight`'s result
  when the caller ran it already (crfiqa_jax.train.job does). Raises cli.Stopped after
  saving on SIGTERM/SIGINT, NonFiniteLossError on divergence, DiskFull on a full disk."""
  with faults.stop_on_signal() as stop:
    return _train(config, Path(workdir), mesh, facts, stop)


def _train(config, workdir: Path, mesh, facts, stop: faults.StopRequest) -> TrainState:
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0

  # --- Data facts, mesh, model, optimiser, jitted step. ---
  num_classes, num_examples = facts or preflight(config, workdir)
  if is_main:  # lets score/evaluate/analyze rebuild the model from a workdir alone
    saved = json.loads(config.to_json_best_effort())
    faults.write_atomic(workdir / CONFIG_FILE, json.dumps(
        {**saved, "num_classes": num_classes}, indent=1).encode())
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
  ckpts = checkpoint.Checkpoints(workdir, max_to_keep=config.keep_checkpoints)
  metrics_file = None
  try:
    # --- State: restore or init. ---
    state = ckpts.restore(trainer.abstract_target(), data_iter)
    if state is not None:
      if is_main:
        log.info("Resumed from %s at step %d", ckpts.directory, int(state.step))
    else:
      state = trainer.init()
      if config.init_checkpoint:
        state = warmstart.load_init(state, config, trainer)
    if is_main:
      metrics_file = MetricsFile(workdir / METRICS_FILE, int(state.step))
    loop = Loop(config, trainer, ckpts, stop, metrics_file)
    state = loop.run(state, data_iter)
    ckpts.wait()
  finally:
    try:
      ckpts.close()
    finally:
      if metrics_file:
        metrics_file.close()
      close = getattr(data_iter, "close", None)
      if close:
        close()
  if loop.stopped:
    who = stop.name or "a stop request of another process"
    after = f", {stop.seconds():.1f} s after the signal" if stop else ""
    raise cli.Stopped(f"{who}: stopped at step {loop.step} of {trainer.total_steps}; the "
                      f"train state and data position are saved in {ckpts.directory}/"
                      f"{loop.step}{after}; rerun the same command to resume")
  return state
