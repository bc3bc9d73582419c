"""One process of the multi-process test (tests/test_multiprocess.py): joins the job with
jax.distributed on loopback, trains the tiny config, process 0 saves the gathered params."""

import sys

import jax
import numpy as np


def main(port, pid, nproc, data_dir, workdir, out, steps):
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=int(nproc),
                             process_id=int(pid))
  from jax.experimental import multihost_utils

  from crfiqa_jax import main as cli
  from crfiqa_jax import train
  from test_train import TINY
  cfg = cli.load_config("base", dict(TINY, data_dir=data_dir, total_steps=steps,
                                     shard_centres="true"))
  assert jax.device_count() == 8 and jax.local_device_count() == 4
  state = train.train(cfg, workdir)
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(out, **flat)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
