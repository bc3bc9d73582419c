"""Test setup: 8 fake CPU devices (set before jax is imported) and tiny shared fixtures."""

import os

# XLA's LLVM optimisation off: the suite's programs are tiny and compiled far more often than
# they run, and compiling dominates its time (e.g. an 8-device train step 54 s -> 16 s).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny train step (same config, same shapes) through new Trainer
# objects, and jit's in-memory cache is per function object: a persistent compilation cache
# for this session (inherited by the subprocess tests) compiles each program once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  _cache = tempfile.mkdtemp(prefix="crfiqa_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory):
  """A 10-identity, 160-image dataset of 32×32 JPEGs (random pixels, labels i % 10)."""
  from crfiqa_jax import data
  out = tmp_path_factory.mktemp("tiny_records")

  def gen():
    rng = np.random.default_rng(0)
    for i in range(160):
      img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
      yield {"image": data.encode_jpeg(img), "label": i % 10, "metadata": {"index": i}}

  data.write_records(out, {"train": gen}, num_classes=10, num_shards=2)
  return out


import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a subprocess test with `devices` fake CPU devices, keeping the other flags
  of this session (the suite's optimisation level, or whatever the caller set)."""
  keep = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([f"--xla_force_host_platform_device_count={devices}", *keep])


sys.path.insert(0, str(Path(__file__).parent))  # test oracles (released_erc, torch models)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
  """An exported iresnet_tiny (random weights): (folder, model, variables)."""
  from crfiqa_jax import models
  from crfiqa_jax.serve import model_io
  from helpers import random_variables
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, 112)
  out = tmp_path_factory.mktemp("tiny_model") / "model"
  model_io.save_exported(out, variables, arch="iresnet_tiny", embedding_dim=64)
  return out, model, variables
