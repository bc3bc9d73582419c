import json
import os
import subprocess
import sys


from conftest import xla_flags


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
