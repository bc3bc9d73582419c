"""The main job on two processes × 2 CPU devices (jax.distributed over loopback) from an
empty workdir: the synthetic data is written once while the other process waits, training
and the held-out evaluation run on both, and the figures equal a one-process run's with
the same global batch and device count."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import xla_flags

ARGS = ["--config=demo", "--config.synthetic.identities=10", "--config.synthetic.per_identity=4",
        "--config.synthetic.eval_identities=5", "--config.synthetic.eval_per_identity=4",
        "--config.total_steps=3", "--config.batch_size=8", "--config.data_workers=0",
        "--config.log_every=1", "--config.eval_batch_size=8"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=xla_flags(devices))


def test_demo_main_on_two_processes_from_an_empty_workdir(tmp_path):
  port = _free_port()
  wd = tmp_path / "mp"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "crfiqa_jax.main", *ARGS, f"--workdir={wd}",
       f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  assert [p.returncode for p in procs] == [0, 0], "\n\n".join(x[-3000:] for x in logs)
  assert "Spearman" in logs[0] and "Spearman" not in logs[1]  # one report, by process 0
  single = subprocess.run([sys.executable, "-m", "crfiqa_jax.main", *ARGS,
                           f"--workdir={tmp_path / 'sp'}"], env=_env(4), capture_output=True,
                          text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  m2 = json.loads((wd / "eval" / "metrics.json").read_text())
  m1 = json.loads((tmp_path / "sp" / "eval" / "metrics.json").read_text())
  for key in ("num_pairs", "num_images", "train_steps"):
    assert m2[key] == m1[key]
  assert m2["spearman_quality_vs_severity"] == pytest.approx(
      m1["spearman_quality_vs_severity"], abs=1e-3)
  for mode, by_f in m1["erc_auc"].items():
    for f, by_m in by_f.items():
      assert m2["erc_auc"][mode][f]["learned"] == pytest.approx(by_m["learned"], abs=2e-3)
