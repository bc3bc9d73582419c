"""Two processes × 4 CPU devices (jax.distributed over loopback) train exactly like one
process with 8 devices: same data order, same sharded step, same parameters."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from crfiqa_jax import main as cli
from crfiqa_jax import train
from test_train import TINY

HERE = Path(__file__).parent


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tiny_records, tmp_path):
  port, steps = _free_port(), "3"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
  out = tmp_path / "params.npz"
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / "multiprocess_worker.py"), str(port), str(i), "2",
       str(tiny_records), str(tmp_path / "mp"), str(out), steps],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=420)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
  # Each process wrote its own grain iterator state into the shared checkpoint.
  data_dir = tmp_path / "mp" / "checkpoints" / steps / "data"
  assert len(list(data_dir.glob("process_*"))) == 2

  cfg = cli.load_config("base", dict(TINY, data_dir=str(tiny_records), total_steps=steps,
                                     shard_centres="true"))
  single = train.as_numpy(train.train(cfg, tmp_path / "sp").params)
  want = {jax.tree_util.keystr(k): v
          for k, v in jax.tree_util.tree_flatten_with_path(single)[0]}
  got = np.load(out)
  assert set(got.files) == set(want)
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
