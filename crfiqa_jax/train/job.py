"""The main job, above training and evaluation: data, checks, train, held-out report.

    python -m crfiqa_jax.main --config=demo --workdir=/tmp/crfiqa_demo

Order matters for users of big runs: everything the run will need is checked before the
first step (data layout and metadata, eval data, the init checkpoint, a resumed workdir's
config), so a mistake costs seconds, not a training run. With several processes the
synthetic data is written once, by process 0, while the others wait at a barrier.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import ml_collections
from jax.experimental import multihost_utils

from crfiqa_jax import cli, faults, sharding
from crfiqa_jax.data import pairs, synthetic
from crfiqa_jax.data.records import RecordSource, read_info
from crfiqa_jax.evaluation import heldout
from crfiqa_jax.serve import model_io
from crfiqa_jax.train import trainer

log = logging.getLogger(__name__)


def barrier(name: str):
  """Waits for every process (no-op with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def prepare_data(config: ml_collections.ConfigDict, workdir: str | Path):
  """The demo's synthetic data (written once, by process 0) into config.data_dir."""
  if not config.synthetic:
    return
  if not config.data_dir:
    with config.unlocked():
      config.data_dir = str(Path(workdir).absolute() / "data")
      config.eval_data_dir = config.eval_data_dir or config.data_dir
  error = None
  if jax.process_index() == 0:
    try:
      synthetic.ensure_dataset(config)
    except ValueError as e:  # raised after the barrier, on every process alike
      error = e
  barrier("crfiqa_jax synthetic data ready")
  if error is not None:
    raise error
  if jax.process_index() != 0:
    synthetic.ensure_dataset(config)  # now only checks the parameters of what is there


NO_EVAL = "none"  # --config.eval_data_dir=none: no held-out report, even if data_dir has one


def held_out_split(data_dir) -> bool:
  """Whether a prepared dataset holds a held-out split: a "test" split with stored pairs
  (`prepare celeba`, `prepare bin`) or with every image's degradation severity (`prepare
  synthetic`)."""
  try:
    if "test" not in read_info(data_dir)["splits"]:
      return False
    if pairs.has_pairs(data_dir, "test"):
      return True
    _, meta = RecordSource(data_dir, "test").labels_and_metadata()
  except (OSError, ValueError, KeyError):
    return False
  return bool(meta) and all("severity" in m for m in meta)


def default_eval_data(config: ml_collections.ConfigDict) -> None:
  """An empty eval_data_dir becomes data_dir when that holds a held-out split (said in one
  log line); "none" becomes empty (no held-out report)."""
  if config.eval_data_dir.strip().lower() == NO_EVAL:
    config.eval_data_dir = ""
  elif not config.eval_data_dir and config.data_dir and held_out_split(config.data_dir):
    config.eval_data_dir = config.data_dir
    log.info("--config.eval_data_dir is empty and %s holds a held-out 'test' split: the "
             "report after training uses it (--config.eval_data_dir=none skips it)",
             config.data_dir)


def preflight(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[int, int]:
  """Everything that would otherwise fail after training, checked once, before the first
  step; returns the data's (num_classes, num_train_examples)."""
  facts = trainer.preflight(config, workdir)
  if config.eval_data_dir:
    heldout.check(config.eval_data_dir, config.image_size)
  if config.init_checkpoint:
    try:
      model_io.kind_of_existing(config.init_checkpoint)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"--config.init_checkpoint: {e}") from None
    _, _, info = model_io.load_model(config.init_checkpoint, config.model)
    if (info["arch"], info["embedding_dim"]) != (config.model, config.embedding_dim):
      raise ValueError(f"init_checkpoint {config.init_checkpoint} is {info['arch']} with "
                       f"embedding {info['embedding_dim']}; the config wants {config.model} "
                       f"with {config.embedding_dim}: fix --config.model / "
                       "--config.embedding_dim or --config.init_checkpoint")
  return facts


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Synthetic data if the config asks for it, checks, training, then the ERC report of
  `config.eval_data_dir` (if set) into workdir/eval; returns the final TrainState.

  SIGTERM/SIGINT from any point of the job is a stop request (crfiqa_jax.faults): training
  stops at a step all processes agree on, saved (cli.Stopped, from trainer.train); a
  request that comes after the last step skips the held-out report (cli.Stopped too), which
  rerunning the same command then writes. During the report itself the report finishes."""
  with faults.stop_on_signal() as stop:
    started = time.perf_counter()
    prepare_data(config, workdir)
    default_eval_data(config)
    facts = preflight(config, workdir)
    state = trainer.train(config, workdir, facts=facts)
    if config.eval_data_dir:
      if sharding.any_process(bool(stop)):
        raise cli.Stopped(f"{stop.name or 'a stop request of another process'}: training is "
                          f"complete ({int(state.step)} steps, saved in {workdir}); the "
                          "held-out report was not written: rerun the same command to write it")
      out = Path(workdir) / "eval"
      heldout.report(state, config, out, started=started)
  return state
