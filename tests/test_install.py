"""As a stranger would: a regular (non-editable) install used from another directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import xla_flags

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  target = tmp_path_factory.mktemp("site")
  r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                      "--no-build-isolation", "--target", str(target), str(ROOT)],
                     capture_output=True, text=True, timeout=600)
  if r.returncode != 0:
    pytest.fail(f"pip install failed:\n{r.stderr[-3000:]}")
  return target


def _run(target, args, cwd):
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(2))
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


def test_named_configs_work_after_a_regular_install(installed, tmp_path):
  where = _run(installed, ["-c", "import crfiqa_jax, crfiqa_jax.configs.large as c; "
                           "print(crfiqa_jax.__file__); print(c.__file__)"], tmp_path)
  assert where.returncode == 0, where.stderr
  assert all(line.startswith(str(installed)) for line in where.stdout.split())
  for name in ("large", "small"):
    r = _run(installed, ["-m", "crfiqa_jax.main", f"--config={name}",
                         f"--workdir={tmp_path / name}"], tmp_path)
    assert r.returncode != 0 and "config.data_dir is empty" in r.stderr, r.stderr[-2000:]
  r = _run(installed, ["-m", "crfiqa_jax.main", "--config=nope", f"--workdir={tmp_path}"],
           tmp_path)
  assert "Named configs" in r.stderr and "'demo'" in r.stderr
  wd = tmp_path / "demo"
  r = _run(installed, ["-m", "crfiqa_jax.main", "--config=demo", f"--workdir={wd}",
                       "--config.synthetic.identities=8", "--config.synthetic.per_identity=4",
                       "--config.synthetic.eval_identities=4",
                       "--config.synthetic.eval_per_identity=3", "--config.total_steps=2",
                       "--config.batch_size=8", "--config.data_workers=0"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Spearman" in r.stdout and (wd / "eval" / "erc.png").exists()
