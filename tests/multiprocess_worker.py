"""One process of the multi-process test (tests/end_to_end/test_multiprocess.py): joins the
job with jax.distributed on loopback and trains the tiny config; process 0 saves gathered
params.

  phase "first":  trains <tmp>/straight for 3 steps (params → straight.npz).
A checkpoint only at the end of the run (checkpoint_every=100) keeps it fast; stopping and
resuming a pair is tests/end_to_end/test_preemption.py's.
"""

import sys
from pathlib import Path

import jax
import numpy as np


def _train(data_dir, workdir, steps, out=None):
  from jax.experimental import multihost_utils

  from crfiqa_jax.train import config as config_lib
  from crfiqa_jax.train.trainer import train
  from helpers import TINY
  cfg = config_lib.load_config("base", dict(TINY, data_dir=data_dir, total_steps=str(steps),
                                     shard_centres="true", checkpoint_every="100"))
  state = train(cfg, workdir)
  if out is not None:
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if jax.process_index() == 0:
      flat = {jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
      np.savez(out, **flat)


def main(port, pid, nproc, data_dir, tmp, phase):
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=int(nproc),
                             process_id=int(pid))
  assert jax.device_count() == 8 and jax.local_device_count() == 4
  tmp = Path(tmp)
  # One cache per process: the two processes compile different executables.
  jax.config.update("jax_compilation_cache_dir", str(tmp / f"jax_cache_{pid}"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if phase == "first":
    _train(data_dir, tmp / "straight", 3, tmp / "straight.npz")
  else:
    raise ValueError(f"unknown phase {phase!r}")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
