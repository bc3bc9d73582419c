"""The streaming, sharded inference layer: order and failures on every device, feature
kinds and memmaps, bounded memory."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import xla_flags
from crfiqa_jax import models
from crfiqa_jax.data import sources
from crfiqa_jax.serve import inference
from helpers import random_variables


@pytest.fixture(scope="module")
def small_model():
  model = models.create_model("iresnet_tiny", embedding_dim=16)
  variables = random_variables(model, 32)
  # Non-trivial BN statistics, so eval mode is really exercised.
  rng = np.random.default_rng(0)
  variables["batch_stats"] = jax.tree.map(
      lambda x: np.asarray(rng.uniform(0.5, 1.5, x.shape), np.float32), variables["batch_stats"])
  return model, variables


def _direct(model, variables, imgs):
  x = (imgs.astype(np.float32) - 127.5) / 127.5
  emb, q = model.apply(variables, x, train=False)
  return np.asarray(emb), np.asarray(q)


def test_stream_in_order_with_failures_on_all_devices(small_model):
  model, variables = small_model
  imgs = np.random.default_rng(1).integers(0, 255, (23, 32, 32, 3), dtype=np.uint8)
  bad = {4, 17}

  def load(i):
    if i in bad:
      raise sources.SkipImage(f"broken {i}")
    return imgs[i]

  pred = inference.FlaxPredictor(model, variables, image_size=32)
  assert pred.batch_multiple == len(jax.local_devices()) == 8
  batches = list(inference.stream(pred, sources.ImageSource(load, 23), batch_size=5,
                                  flip=True, progress=False))
  assert [list(b.positions) for b in batches] == [list(range(s, min(s + 8, 23)))
                                                  for s in range(0, 23, 8)]  # 5 → 8 devices
  idx = np.concatenate([b.indices for b in batches])
  assert idx.tolist() == [i for i in range(23) if i not in bad]
  assert {k: v for b in batches for k, v in b.failures.items()} == {4: "broken 4",
                                                                     17: "broken 17"}
  emb = np.concatenate([b.embedding for b in batches])
  q = np.concatenate([b.quality for b in batches])
  want_e, want_q = _direct(model, variables, imgs[idx])
  np.testing.assert_allclose(q, want_q, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(emb, want_e, rtol=1e-4, atol=1e-5)
  flip_e, _ = _direct(model, variables, imgs[idx][:, :, ::-1])
  np.testing.assert_allclose(np.concatenate([b.embedding_flip for b in batches]), flip_e,
                             rtol=1e-4, atol=1e-5)


def test_extract_feature_kinds_and_memmap(small_model, tmp_path):
  model, variables = small_model
  imgs = np.random.default_rng(2).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
  pred = inference.FlaxPredictor(model, variables, image_size=32)
  src = sources.array_source(imgs)
  e, _ = _direct(model, variables, imgs)
  ef, _ = _direct(model, variables, imgs[:, :, ::-1])
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  cat, q, fails = inference.extract(pred, src, batch_size=8, progress=False)
  assert not fails and cat.shape == (9, 32)
  np.testing.assert_allclose(cat, np.concatenate([unit(e), unit(ef)], 1), atol=1e-5)
  summed, _, _ = inference.extract(pred, src, features="sum", progress=False)
  np.testing.assert_allclose(summed, e + ef, rtol=1e-4, atol=1e-5)
  mm, _, _ = inference.extract(pred, src, features="raw", dtype=np.float16,
                               memmap=tmp_path / "f.npy", progress=False)
  assert isinstance(mm, np.memmap) and mm.dtype == np.float16
  np.testing.assert_allclose(np.load(tmp_path / "f.npy"), e, rtol=2e-3, atol=2e-3)
  none, q2, _ = inference.extract(pred, src, features="none", progress=False)
  assert none is None and np.allclose(q, q2)
  assert inference.process_slice(10, 0, 3) == range(0, 3)
  assert inference.process_slice(10, 2, 3) == range(7, 10)


# ---------------------------------------------------------------------------------------
# Scoring that survives a kill.
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Memory stays bounded.
# ---------------------------------------------------------------------------------------

RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, jax, jax.numpy as jnp
    from crfiqa_jax import models
    from crfiqa_jax.data import sources
    from crfiqa_jax.serve import inference
    n = int(sys.argv[1])
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    src = sources.ImageSource(lambda i: base[i % 16].copy(), n)
    model = models.create_model("iresnet_tiny", embedding_dim=16)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))
    v = jax.tree.map(lambda a: np.full(a.shape, 0.01, np.float32), shapes)
    pred = inference.FlaxPredictor(model, v, image_size=112)
    feats, q, _ = inference.extract(pred, src, batch_size=64, dtype=np.float16,
                                    progress=False)
    assert np.isfinite(q).all() and len(q) == n
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")


def _env():
  return dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path):
  script = tmp_path / "rss.py"
  script.write_text(RSS_SCRIPT)
  rss = {}
  for n in (1000, 4000):
    r = subprocess.run([sys.executable, str(script), str(n)], env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rss[n] = int(r.stdout.split()[-1])
  decoded_extra = 3000 * 112 * 112 * 3  # what holding the extra images decoded would take
  assert rss[4000] - rss[1000] < 0.15 * decoded_extra, rss


# ---------------------------------------------------------------------------------------
# Training at scale: elastic resume, checks before the first step, data written once.
# ---------------------------------------------------------------------------------------

