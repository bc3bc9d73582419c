"""The streaming, sharded inference layer and what stands on it at scale: order, failures,
sharding, bounded memory, resumable scoring, elastic resume, checks before the first step."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import (analyze, checkpoints, convert, experiment, inference, main, models,
                        sharding, train)
from crfiqa_jax.data import synthetic
from conftest import random_variables, xla_flags
from test_train import TINY


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
      raise inference.SkipImage(f"broken {i}")
    return imgs[i]

  pred = inference.FlaxPredictor(model, variables, image_size=32)
  assert pred.batch_multiple == len(jax.local_devices()) == 8
  batches = list(inference.stream(pred, inference.ImageSource(load, 23), batch_size=5,
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
  src = inference.array_source(imgs)
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

@pytest.fixture(scope="module")
def scoring_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("scoring")
  model = models.create_model("iresnet_tiny", embedding_dim=16)
  ckpt = root / "model"
  convert.save_inference(ckpt, random_variables(model, 32, seed=3), arch="iresnet_tiny",
                         embedding_dim=16, image_size=32)
  faces = root / "faces"
  faces.mkdir()
  rng = np.random.default_rng(0)
  base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
  for i in range(3000):
    img = np.roll(base, i, axis=1)
    Image.fromarray(img).save(faces / f"{i:05d}.jpg", quality=90)
  (faces / "00007.jpg").write_bytes(b"not a jpeg")  # a failure in the middle
  return ckpt, faces


def _score_cmd(ckpt, faces, out, *extra):
  return [sys.executable, "-m", "crfiqa_jax.score", f"--checkpoint={ckpt}",
          f"--input={faces}", f"--output={out}", "--batch-size=8", *extra]


def _env():
  return dict(os.environ, XLA_FLAGS=xla_flags(2),
              JAX_PLATFORMS="cpu")


def test_score_killed_then_resumed_equals_uninterrupted(scoring_setup, tmp_path):
  ckpt, faces = scoring_setup
  full = tmp_path / "full.csv"
  r = subprocess.run(_score_cmd(ckpt, faces, full), env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 1 and "00007.jpg" in r.stderr  # the broken file, reported
  part = tmp_path / "part.csv"
  p = subprocess.Popen(_score_cmd(ckpt, faces, part), env=_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    if part.exists() and len(part.read_bytes().splitlines()) > 200:  # rows written
      break
    time.sleep(0.005)
  p.send_signal(signal.SIGKILL)
  p.wait()
  n_before = len(part.read_text().splitlines()) - 1
  assert 0 < n_before < 3000, "the run was not killed midway"
  r = subprocess.run(_score_cmd(ckpt, faces, part, "--resume"), env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stderr[-2000:]
  assert part.read_text() == full.read_text()


def test_resume_cuts_a_torn_line_and_refuses_foreign_files(tmp_path):
  from crfiqa_jax import score
  names = [f"/x/{i}.jpg" for i in range(5)]
  out = tmp_path / "s.csv"
  out.write_text("path,quality\n/x/0.jpg,0.5\n/x/1.jpg,0.25\n/x/2.j")
  assert score.completed_rows(out, names) == 2
  assert out.read_text() == "path,quality\n/x/0.jpg,0.5\n/x/1.jpg,0.25\n"
  out.write_text("path,quality\n/y/0.jpg,0.5\n")
  with pytest.raises(ValueError, match="not a run over these inputs"):
    score.completed_rows(out, names)


# ---------------------------------------------------------------------------------------
# Memory stays bounded.
# ---------------------------------------------------------------------------------------

RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, jax, jax.numpy as jnp
    from crfiqa_jax import inference, models
    n = int(sys.argv[1])
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (16, 112, 112, 3), dtype=np.uint8)
    src = inference.ImageSource(lambda i: base[i % 16].copy(), n)
    model = models.create_model("iresnet_tiny", embedding_dim=16)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))
    v = jax.tree.map(lambda a: np.full(a.shape, 0.01, np.float32), shapes)
    pred = inference.FlaxPredictor(model, v, image_size=112)
    feats, q, _ = inference.extract(pred, src, batch_size=64, dtype=np.float16,
                                    progress=False)
    assert np.isfinite(q).all() and len(q) == n
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")


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

def _cfg(data_dir, **kw):
  return main.load_config("base", dict(TINY, data_dir=str(data_dir), shard_centres="true",
                                       **{k: str(v) for k, v in kw.items()}))


def test_resume_on_another_device_count(tiny_records, tmp_path):
  mesh4 = sharding.make_mesh(jax.devices()[:4])
  mesh2 = sharding.make_mesh(jax.devices()[:2])
  straight = train.train(_cfg(tiny_records, total_steps=4, checkpoint_every=2),
                         tmp_path / "a", mesh=mesh4)
  train.train(_cfg(tiny_records, total_steps=2, checkpoint_every=2), tmp_path / "b",
              mesh=mesh4)
  # 10 classes: padded to 12 on 4 devices, 10 on 2; the checkpoint is re-padded.
  resumed = train.train(_cfg(tiny_records, total_steps=4, checkpoint_every=2),
                        tmp_path / "b", mesh=mesh2)
  assert int(resumed.step) == 4 and resumed.params["centres"].shape == (32, 10)
  a, b = train.as_numpy(straight.params), train.as_numpy(resumed.params)
  a["centres"] = a["centres"][:, :10]
  for (k, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(k))
  # read_workdir (score, analyze) reads it whatever wrote it.
  _, state, step = checkpoints.read_workdir(tmp_path / "a")
  assert step == 4 and state["params"]["centres"].shape == (32, 12)


def test_checks_fail_before_the_first_step(tiny_records, tmp_path):
  cfg = _cfg(tiny_records, total_steps=1, eval_data_dir=str(tiny_records))
  with pytest.raises(ValueError, match="no split 'test'|lacks per-image 'severity'"):
    experiment.preflight(cfg, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()  # nothing was trained
  with pytest.raises(FileNotFoundError, match="init_checkpoint"):
    experiment.preflight(_cfg(tiny_records, init_checkpoint="/nope"), tmp_path / "wd")
  train.train(_cfg(tiny_records, total_steps=1), tmp_path / "wd")
  with pytest.raises(ValueError, match=r"embedding_dim=32.*--config.embedding_dim=32"):
    experiment.preflight(_cfg(tiny_records, embedding_dim=16), tmp_path / "wd")


def test_synthetic_cache_is_checked(tmp_path):
  cfg = main.load_config("demo", {"synthetic.identities": "3", "synthetic.per_identity": "2",
                                  "synthetic.eval_identities": "2",
                                  "synthetic.eval_per_identity": "2",
                                  "data_dir": str(tmp_path / "d")})
  synthetic.ensure_dataset(cfg)
  synthetic.ensure_dataset(cfg)  # same parameters: reused
  other = main.load_config("demo", {"synthetic.identities": "4", "synthetic.per_identity": "2",
                                    "synthetic.eval_identities": "2",
                                    "synthetic.eval_per_identity": "2",
                                    "data_dir": str(tmp_path / "d")})
  with pytest.raises(ValueError, match="identities: cached 3 vs config 4"):
    synthetic.ensure_dataset(other)


def test_sample_pairs_is_uniform_over_all_impostor_pairs():
  labels = np.repeat(np.arange(50), 4)  # 200 images
  a, b, gen = analyze.sample_pairs(labels, 2000, seed=0)
  imp_a, imp_b = a[~gen], b[~gen]
  assert len(set(zip(imp_a, imp_b))) == 2000 and np.all(imp_a < imp_b)
  assert np.all(labels[imp_a] != labels[imp_b]) and np.all(labels[a[gen]] == labels[b[gen]])
  # Uniform pairs of 200 images: the larger index is spread over the whole set (the old
  # "smallest indices first" selection kept max(b) near the start), and every image appears
  # about equally often.
  seen = np.bincount(np.r_[imp_a, imp_b], minlength=200)
  assert imp_b.max() > 190 and np.median(imp_b) > 100
  assert seen[:100].sum() / seen[100:].sum() == pytest.approx(1, abs=0.15)
  # All 300 genuine pairs exist; asking for more returns each once.
  a, b, gen = analyze.sample_pairs(labels, 1000, seed=1)
  assert gen.sum() == 50 * 6 and len(set(zip(a[gen], b[gen]))) == 300
