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

from crfiqa_jax import checkpoints, heldout, train
from crfiqa_jax.data import synthetic

log = logging.getLogger(__name__)


def barrier(name: str):
  """Waits for every process (no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
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


def preflight(config: ml_collections.ConfigDict, workdir: str | Path):
  """Everything that would otherwise fail after training, checked before the first step."""
  train.dataset_facts(config)
  if config.eval_data_dir:
    heldout.check_eval_data(config.eval_data_dir, "test")
  if config.init_checkpoint:
    if not Path(config.init_checkpoint).exists():
      raise FileNotFoundError(f"init_checkpoint {config.init_checkpoint} does not exist: "
                              "fix --config.init_checkpoint")
    _, _, info = checkpoints.load_model(config.init_checkpoint, config.model)
    if (info["arch"], info["embedding_dim"]) != (config.model, config.embedding_dim):
      raise ValueError(f"init_checkpoint {config.init_checkpoint} is {info['arch']} with "
                       f"embedding {info['embedding_dim']}; the config wants {config.model} "
                       f"with {config.embedding_dim}: fix --config.model / "
                       "--config.embedding_dim or --config.init_checkpoint")
  train.check_resume_config(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Synthetic data if the config asks for it, checks, training, then the ERC report of
  `config.eval_data_dir` (if set) into workdir/eval; returns the final TrainState."""
  started = time.perf_counter()
  prepare_data(config, workdir)
  preflight(config, workdir)
  state = train.train(config, workdir)
  if config.eval_data_dir:
    out = Path(workdir) / "eval"
    m = heldout.evaluate_checkpoint_state(state, config, out, started=started)
    if m is not None:
      heldout.print_summary(m, out)
  return state

