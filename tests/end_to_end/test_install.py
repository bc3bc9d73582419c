"""As a stranger would: a regular (non-editable) install used from another directory."""

import os
import re
import subprocess
import sys

import pytest

from conftest import xla_flags

from helpers import ROOT


def _setuptools_version() -> str | None:
  import importlib.metadata
  try:
    return importlib.metadata.version("setuptools")
  except importlib.metadata.PackageNotFoundError:
    return None


def _build_requirement_unmet(have: str | None) -> str | None:
  """Why setuptools `have` (None: not installed) cannot build the package, or None. The
  install below is offline (--no-build-isolation), so it builds with this environment's
  setuptools, which must meet pyproject.toml's [build-system] (the [test] extra asks for it;
  `python -m venv` brings setuptools 65 on Python 3.11, none from 3.12)."""
  text = (ROOT / "pyproject.toml").read_text()
  block = re.search(r"^\[build-system\]\s*\nrequires\s*=\s*\[([^\]]*)\]", text, re.M)
  need = re.search(r'"setuptools\s*>=\s*(\d+)[^"]*"', block.group(1)) if block else None
  if need is None:
    return "pyproject.toml's [build-system] names no setuptools>=N"
  if have is None or int(have.split(".")[0]) < int(need.group(1)):
    return (f"this environment has setuptools {have or '(none)'}, and building the package "
            f"needs setuptools>={need.group(1)}: pip install -e \".[test]\"")
  return None


def test_the_setuptools_check():
  assert _build_requirement_unmet("84.2.1") is None
  assert _build_requirement_unmet("77.0.3") is None
  for old in ("65.5.0", "76.1", None):
    why = _build_requirement_unmet(old)
    assert why and "setuptools>=77" in why and str(old or "(none)") in why, why
  # ... and the [test] extra installs a setuptools that passes it.
  test_extra = re.search(r"^test\s*=\s*\[([^\]]*)\]", (ROOT / "pyproject.toml").read_text(),
                         re.M)
  floor = re.search(r'"setuptools\s*>=\s*([\d.]+)"', test_extra.group(1))
  assert floor and _build_requirement_unmet(floor.group(1)) is None, test_extra.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  unmet = _build_requirement_unmet(_setuptools_version())
  if unmet:
    pytest.fail(unmet, pytrace=False)
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


def test_every_command_and_the_console_script_answer_help(installed, tmp_path):
  """`--help` of each documented command and of `crfiqa COMMAND`, from another directory,
  against the regular install."""
  import crfiqa_jax.__main__ as console
  env = dict(os.environ, PYTHONPATH=str(installed), JAX_PLATFORMS="cpu")
  script = installed / "bin" / "crfiqa"
  assert script.is_file(), "the crfiqa console script was not installed"
  runs = {f"python -m crfiqa_jax.{entry}": [sys.executable, "-m", f"crfiqa_jax.{entry}", "--help"]
          for entry in console.COMMANDS.values()}
  runs.update({f"crfiqa {name}": [sys.executable, str(script), name, "--help"]
               for name in console.COMMANDS})
  runs["crfiqa"] = [sys.executable, str(script), "--help"]
  # A few at a time: each mostly imports jax, and more than a few per core only queue.
  import concurrent.futures

  def run(argv):
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)

  with concurrent.futures.ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
    done = dict(zip(runs, pool.map(run, runs.values())))
  for what, r in done.items():
    assert r.returncode == 0, f"{what} --help: {r.stderr[-1500:]}"
    assert r.stdout.startswith("usage:"), (what, r.stdout[:200])
    if what.startswith("crfiqa "):
      assert r.stdout.startswith(f"usage: {what}"), (what, r.stdout[:100])
