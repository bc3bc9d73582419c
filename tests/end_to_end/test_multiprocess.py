"""Two processes × 4 CPU devices (jax.distributed over loopback) train exactly like one
process with 8 devices, each saving its own shards and data position (a pair stopped by
SIGTERM and resumed bit-identically: test_preemption.py)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from crfiqa_jax.train import config as config_lib
from crfiqa_jax.train.trainer import train
from helpers import as_numpy
from conftest import xla_flags
from helpers import TINY

from helpers import TESTS as HERE


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_pair(tiny_records, tmp_path, phase):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS=xla_flags(4),
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
  procs = [subprocess.Popen(
      [sys.executable, str(HERE / "multiprocess_worker.py"), str(port), str(i), "2",
       str(tiny_records), str(tmp_path), phase],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=1500)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)


def _data_positions(workdir, step):
  """The grain iterator state each process wrote into checkpoint `step`."""
  files = sorted((workdir / "checkpoints" / str(step) / "data").glob("process_*"))
  return {f.name: json.loads(f.read_text()) for f in files}


def test_two_processes_match_one(tiny_records, tmp_path):
  _run_pair(tiny_records, tmp_path, "first")
  # The pair saved step 3: each process its data position and its own shards of the state
  # (the class centres are split over all 8 devices of both processes).
  ckpt = tmp_path / "straight" / "checkpoints" / "3"
  assert len(_data_positions(tmp_path / "straight", 3)) == 2
  assert {p.name for p in (ckpt / "state").glob("ocdbt.process_*")} == {
      "ocdbt.process_0", "ocdbt.process_1"}
  straight = np.load(tmp_path / "straight.npz")
  lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]

  # The pair trains like one process with 8 devices.
  cfg = config_lib.load_config("base", dict(TINY, data_dir=str(tiny_records), total_steps="3",
                                     shard_centres="true"))
  single = as_numpy(train(cfg, tmp_path / "sp").params)
  want = {jax.tree_util.keystr(k): v
          for k, v in jax.tree_util.tree_flatten_with_path(single)[0]}
  assert set(straight.files) == set(want)
  for k, v in want.items():
    np.testing.assert_allclose(straight[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
