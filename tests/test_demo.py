import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from crfiqa_jax.data import synthetic
from conftest import xla_flags

ROOT = Path(__file__).parent.parent


def test_generator_is_deterministic_and_labelled():
  a = list(synthetic.samples(3, 4, seed=7, size=32))
  b = list(synthetic.samples(3, 4, seed=7, size=32))
  c = list(synthetic.samples(3, 4, seed=8, size=32))
  assert [x["image"] for x in a] == [x["image"] for x in b]
  assert [x["image"] for x in a] != [x["image"] for x in c]
  assert [x["label"] for x in a] == [0] * 4 + [1] * 4 + [2] * 4
  for x in a:
    assert x["metadata"]["kind"] in synthetic.KINDS and 0 <= x["metadata"]["severity"] <= 1
  held_out = list(synthetic.samples(2, 2, seed=7, size=32, first_identity=3))
  assert {x["metadata"]["identity"] for x in held_out} == {3, 4}  # disjoint from 0..2
  assert [x["label"] for x in held_out] == [0, 0, 1, 1]


def test_degradations_hurt_more_with_severity():
  rng = np.random.default_rng(0)
  ident = synthetic.make_identity(rng)
  clean = synthetic.render(ident, np.random.default_rng(1), 64)
  ref = (clean * 255).astype(np.float64)
  for kind in synthetic.KINDS:
    errs = [np.abs(synthetic.degrade(clean, kind, s, np.random.default_rng(2)) - ref).mean()
            for s in (0.05, 0.5, 1.0)]
    assert errs[0] < errs[1] < errs[2], (kind, errs)


def _main(args, tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags(2))
  return subprocess.run([sys.executable, "-m", "crfiqa_jax.main", *args], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=600)


def test_short_demo_run_writes_report(tmp_path):
  wd = tmp_path / "demo"
  args = ["--config=demo", f"--workdir={wd}", "--config.synthetic.identities=12",
          "--config.synthetic.per_identity=6", "--config.synthetic.eval_identities=5",
          "--config.synthetic.eval_per_identity=4", "--config.total_steps=4",
          "--config.batch_size=16", "--config.data_workers=0", "--config.log_every=2"]
  r = _main(args, tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Spearman" in r.stdout and "ERC AUC" in r.stdout
  m = json.loads((wd / "eval" / "metrics.json").read_text())
  assert -1 <= m["spearman_quality_vs_severity"] <= 1
  assert m["num_pairs"] == 20 * 19 // 2 and m["train_steps"] == 4 and m["wall_seconds"] > 0
  for mode in ("recomputed", "fixed"):
    for f in ("1e-2", "1e-3"):
      assert set(m["erc_auc"][mode][f]) == {"learned", "random", "oracle"}
  assert (wd / "eval" / "erc.png").stat().st_size > 10_000
  assert len((wd / "metrics.jsonl").read_text().splitlines()) == 2
  # A second run reuses the cached data and the finished checkpoint.
  r2 = _main(args, tmp_path)
  assert r2.returncode == 0 and "Using cached synthetic dataset" in r2.stderr


def test_cli_errors(tmp_path):
  r = _main(["--config=demo", f"--workdir={tmp_path}", "--config.batchsize=3"], tmp_path)
  assert r.returncode != 0 and "Unknown config key 'batchsize'" in r.stderr
  assert "batch_size" in r.stderr
  r = _main(["--config=small", f"--workdir={tmp_path}"], tmp_path)
  assert r.returncode != 0 and "data_dir is empty" in r.stderr
  r = _main(["--config=nonexistent", f"--workdir={tmp_path}"], tmp_path)
  assert r.returncode != 0 and "Named configs" in r.stderr and "large" in r.stderr
