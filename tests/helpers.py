"""Helpers shared by several test files (imported as `helpers`; conftest puts tests/ on the
path): the tiny training config, a random batch, numpy copies of jax trees."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax.train import config as config_lib

# A tiny model and data layout for train-step tests: 32 px, 16 per batch, 10 classes.
TINY = {"model": "iresnet_tiny", "embedding_dim": "32", "image_size": "32", "batch_size": "16",
        "log_every": "1", "checkpoint_every": "3", "data_workers": "0", "lr": "0.2"}


def tiny_config(**kw):
  """configs/base.py with TINY and `kw` as --config overrides (values as strings)."""
  overrides = dict(TINY, **{k: str(v) for k, v in kw.items()})
  return config_lib.load_config("base", overrides)


def batch(seed=0, n=16, size=32, classes=10):
  """A random uint8 batch {"image" [n, size, size, 3], "label" [n] = i % classes}."""
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
          "label": (np.arange(n) % classes).astype(np.int32)}


def as_numpy(tree):
  """numpy copies of every leaf of a jax tree (a TrainState, metrics)."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent                 # the repository
FIXTURES = TESTS / "fixtures"       # small files checked in (see fixtures/*.py for their origin)
PHOTOS = FIXTURES / "photos"        # real photos (fixtures/photos/README.md)


def random_variables(model, image_size: int = 112, seed: int = 0) -> dict:
  """Random variables of `model` for inference tests: shapes from eval_shape (no slow eager
  init), values from numpy: He-scaled kernels, PReLU slopes in [0.1, 0.4], BN scale ≈ 1
  and bias ≈ 0 with noise, non-trivial running statistics, so a wrong mapping shows."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, image_size, image_size, 3)),
                                             train=False))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = path[-1].key
    if name == "kernel":
      return (rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)
    if name == "alpha":
      return rng.uniform(0.1, 0.4, a.shape).astype(np.float32)
    if name in ("scale", "bias"):
      return ((name == "scale") + 0.2 * rng.standard_normal(a.shape)).astype(np.float32)
    if name == "mean":
      return (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
    return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)  # running variance

  return jax.tree_util.tree_map_with_path(fill, shapes)


def face_like_images():
  """4 face-like synthetic crops (decoded JPEGs) then 3 uniform-noise images, uint8
  [7, 112, 112, 3]."""
  from crfiqa_jax.data import codecs, synthetic
  faces = [codecs.decode_image(s["image"]) for s in synthetic.samples(2, 2, seed=3, size=112)]
  noise = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
  return np.concatenate([np.stack(faces), noise])


def jax_reference(model, variables, images):
  """(embedding, quality) of uint8 images through the Flax model, normalised here."""
  x = (images.astype(np.float32) - 127.5) / 127.5
  emb, q = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return np.asarray(emb), np.asarray(q)


def assert_close(emb, q, emb_ref, q_ref):
  """Quality within 1e-4 (relative to its largest value), embeddings at cosine ≥ 0.9999."""
  rel_q = np.abs(q - q_ref).max() / np.abs(q_ref).max()
  cos = (emb * emb_ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb_ref, axis=1)
  assert rel_q < 1e-4 and cos.min() >= 0.9999, (rel_q, cos.min())


def model_info(arch, model, image_size=112):
  """The info dict a model path would give (crfiqa_jax.serve.model_io.load_model)."""
  return {"arch": arch, "embedding_dim": model.embedding_dim, "image_size": image_size}


# --- Full disks (tests of crfiqa_jax.faults' DiskFull paths). ---------------------------
# Two real mechanisms make the kernel refuse a write: a small filesystem filled up ("tmpfs":
# needs root and a mount namespace that allows it) and the file-size limit ("fsize":
# RLIMIT_FSIZE, any user; the write fails with EFBIG). Tests run every mechanism this
# machine has, so CI without root still runs them all through "fsize" and none skips.

import contextlib  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402


def _can_mount() -> bool:
  if os.geteuid() != 0 or not shutil.which("mount"):
    return False
  with tempfile.TemporaryDirectory() as d:
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                      capture_output=True).returncode != 0:
      return False
    subprocess.run(["umount", d], check=True)
  return True


FULL_DISK = ["tmpfs", "fsize"] if _can_mount() else ["fsize"]


@contextlib.contextmanager
def small_filesystem(path: pathlib.Path, size: int):
  """A tmpfs of `size` bytes mounted at `path` (created), unmounted on the way out even when
  the test fails."""
  path.mkdir(parents=True, exist_ok=True)
  subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                 check=True)
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: pathlib.Path, leave: int) -> pathlib.Path:
  """Fills the filesystem of `path` with one file until `leave` bytes are free; returns it."""
  filler = path / "filler"
  free = shutil.disk_usage(path).free
  with open(filler, "wb") as f:
    f.write(b"\0" * max(0, free - leave))
  return filler


@contextlib.contextmanager
def file_size_limit(limit: int):
  """This process's writes past `limit` bytes of any file fail with EFBIG, within."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def limit_file_size(limit: int, cmd: list[str]) -> list[str]:
  """`cmd` (a Python command line) started through a Python that first limits its file size
  to `limit` bytes (the limit holds across exec), so its writes past it fail."""
  start = ("import os, resource, sys; h = resource.getrlimit(resource.RLIMIT_FSIZE)[1]; "
           f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, h)); "
           "os.execv(sys.argv[1], sys.argv[1:])")
  return [cmd[0], "-c", start, *cmd]
