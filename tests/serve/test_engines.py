"""The scoring engines (crfiqa_jax.engines): onnxruntime equals JAX, its ONNX cache is keyed
by the weights, and the streaming guarantees (order, failures, resume, process slices)
hold on both engines, and a cache write refused for space is one error line."""

import contextlib
import csv
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from crfiqa_jax import models
from crfiqa_jax.data import sources
from crfiqa_jax.serve import engines
from crfiqa_jax.serve import export
from crfiqa_jax.serve import inference
from crfiqa_jax.serve import model_io
from crfiqa_jax.serve import score
from crfiqa_jax.serve import scorer
from helpers import FULL_DISK, fill, file_size_limit, random_variables, small_filesystem


SIZE = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("engines")
  model = models.create_model("iresnet_tiny", embedding_dim=16)
  variables = random_variables(model, SIZE, 0)
  ckpt = model_io.save_exported(root / "model", variables, arch="iresnet_tiny",
                                embedding_dim=16, image_size=SIZE)
  faces = root / "faces"
  faces.mkdir()
  rng = np.random.default_rng(1)
  imgs = rng.integers(0, 256, (13, SIZE, SIZE, 3), dtype=np.uint8)
  for i, img in enumerate(imgs):
    Image.fromarray(img).save(faces / f"{i:03d}.png")
  (faces / "005b.jpg").write_bytes(b"not a jpeg")  # a failure between 005 and 006
  return model, variables, ckpt, faces, imgs


def reference(model, variables, imgs):
  """The model applied directly to the normalised pixels (no predictor, no engine)."""
  x = (imgs.astype(np.float32) - 127.5) / 127.5
  emb, q = model.apply(variables, x, train=False)
  return np.asarray(emb), np.asarray(q)


def test_auto_is_onnxruntime_on_cpu_and_bad_choices_are_refused(setup):
  model = setup[0]
  assert jax.default_backend() == "cpu"
  # The released widths go to onnxruntime; the narrow tiny net stays on JAX (faster there).
  assert engines.choose("auto", models.create_model("iresnet50")) == "onnxruntime"
  assert engines.choose("auto", model) == "jax"
  assert engines.choose("jax", model) == "jax"
  with pytest.raises(ValueError, match="choose one of"):
    engines.choose("tensorrt", model)
  with pytest.raises(ValueError, match="needs an iResNet"):
    engines.choose("onnxruntime", object())
  assert engines.choose("auto", object()) == "jax"  # not exportable: JAX, silently


def test_onnxruntime_equals_jax_within_1e4(setup):
  model, variables, ckpt, _, imgs = setup
  emb_ref, q_ref = reference(model, variables, imgs)
  got = {}
  for engine in ("jax", "onnxruntime"):
    pred = engines.load_predictor(ckpt, engine=engine)
    assert pred.engine == engine and pred.image_size == SIZE and pred.embedding_dim == 16
    got[engine] = scorer.Scorer(pred, batch_size=8).embed(imgs, features="raw")
  for emb, q in got.values():
    assert np.abs(q - q_ref).max() / np.abs(q_ref).max() < 1e-4
    assert np.abs(emb - emb_ref).max() / np.abs(emb_ref).max() < 1e-4
  rel = np.abs(got["onnxruntime"][1] - got["jax"][1]) / np.abs(got["jax"][1]).max()
  assert rel.max() < 1e-4


def test_onnx_cache_is_reused_and_keyed_by_the_weights(setup, tmp_path, monkeypatch):
  model, variables, _, _, imgs = setup
  d = model_io.save_exported(tmp_path / "m", variables, arch="iresnet_tiny",
                             embedding_dim=16, image_size=SIZE)
  engines.load_predictor(d, engine="onnxruntime")
  (first,) = (d / "onnx").glob("*.onnx")
  key = engines.weights_key(model, variables, {"arch": "iresnet_tiny", "image_size": SIZE})
  assert first.name == key[:20] + ".onnx"

  def no_export(*a, **k):
    raise AssertionError("exported again although the weights did not change")
  monkeypatch.setattr(export, "onnx_model", no_export)
  engines.load_predictor(d, engine="onnxruntime")
  monkeypatch.undo()

  # One changed weight: a new key and a new file whose outputs follow the new weights.
  changed = jax.tree.map(np.array, variables)
  changed["params"]["qs"]["bias"] = changed["params"]["qs"]["bias"] + 1.0
  d2 = model_io.save_exported(tmp_path / "m2", changed, arch="iresnet_tiny",
                              embedding_dim=16, image_size=SIZE)
  pred = engines.load_predictor(d2, engine="onnxruntime")
  (second,) = (d2 / "onnx").glob("*.onnx")
  assert second.name != first.name
  np.testing.assert_allclose(scorer.Scorer(pred)(imgs), reference(model, changed, imgs)[1],
                             rtol=1e-4, atol=1e-4)

  # A model folder that cannot be written: the cache directory instead.
  monkeypatch.setenv("CRFIQA_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(engines, "_writable", lambda d: False)
  engines.load_predictor(d, engine="onnxruntime")
  assert [p.name for p in (tmp_path / "cache" / "onnx").glob("*.onnx")] == [first.name]


def _score(pred, faces, out, **kw):
  names = score.list_inputs(faces)
  source = sources.files_source(names, image_size=SIZE)
  failures = score.score_to_csv(pred, names, source, out, batch_size=4, progress=False, **kw)
  return names, failures


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


@pytest.mark.parametrize("engine", ["jax", "onnxruntime"])
def test_order_failures_resume_and_slices_hold(setup, tmp_path, engine):
  model, variables, ckpt, faces, imgs = setup
  pred = engines.load_predictor(ckpt, engine=engine)
  full = tmp_path / "full.csv"
  names, failures = _score(pred, faces, full)
  rows = _rows(full)
  assert [r[0] for r in rows[1:]] == names and names[6].endswith("005b.jpg")
  assert list(failures) == [6] and rows[7][1] == ""
  q = np.array([float(r[1]) for r in rows[1:] if r[1]])
  np.testing.assert_allclose(q, reference(model, variables, imgs)[1], rtol=1e-4, atol=1e-5)

  # Killed after 5 rows, mid-line: --resume completes it to the uninterrupted file.
  part = tmp_path / "part.csv"
  part.write_bytes(b"".join(full.read_bytes().splitlines(keepends=True)[:6]) + b"013.pn")
  _score(pred, faces, part, resume=True)
  assert part.read_bytes() == full.read_bytes()

  # Two process slices, scored separately and joined: the same file.
  parts = [tmp_path / f"p{k}.csv" for k in range(2)]
  for k, p in enumerate(parts):
    _score(pred, faces, p, positions=inference.process_slice(len(names), k, 2))
  score._join_parts(tmp_path / "joined.csv", parts)
  assert (tmp_path / "joined.csv").read_bytes() == full.read_bytes()


def test_cli_engine_flag(setup, tmp_path, capsys):
  _, _, ckpt, faces, _ = setup
  out = {}
  for engine in ("jax", "onnxruntime", "auto"):
    rc = score.main([f"--checkpoint={ckpt}", f"--input={faces}", f"--engine={engine}",
                     f"--output={tmp_path / engine}.csv"])
    assert rc == 1  # the broken file
    out[engine] = np.array([float(r[1]) if r[1] else np.nan
                            for r in _rows(tmp_path / f"{engine}.csv")[1:]])
  np.testing.assert_allclose(out["onnxruntime"], out["jax"], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["auto"], out["jax"])  # the tiny net: JAX
  onnx_path = next((ckpt / "onnx").glob("*.onnx"))
  rc = score.main([f"--checkpoint={onnx_path}", f"--input={faces}", "--engine=jax",
                   f"--output={tmp_path / 'x.csv'}"])
  assert rc == 2 and "runs on onnxruntime" in capsys.readouterr().err


@pytest.mark.parametrize("how", FULL_DISK)
def test_onnx_cache_on_a_full_disk_is_one_error_line(setup, tmp_path, capsys, how):
  """The ONNX cache beside the model cannot be written (a filled tmpfs, or the file-size
  limit): `score` exits with 2 and one line naming the .onnx file and the bytes it needs;
  no file of the cache is left behind, and with room the same command scores."""
  _, _, ckpt, faces, _ = setup
  with contextlib.ExitStack() as stack:
    if how == "tmpfs":
      fs = stack.enter_context(small_filesystem(tmp_path / "fs", 4 << 20))
      model = shutil.copytree(ckpt, fs / "model", ignore=shutil.ignore_patterns("onnx"))
      filler = fill(fs, 4096)
      limited = contextlib.nullcontext
    else:
      model = shutil.copytree(ckpt, tmp_path / "model", ignore=shutil.ignore_patterns("onnx"))
      filler, limited = None, lambda: file_size_limit(4096)
    argv = [f"--checkpoint={model}", f"--input={faces}", f"--output={tmp_path / 'q.csv'}",
            "--engine=onnxruntime"]
    with limited():
      rc = score.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert str(model / "onnx") in lines[0] and ".onnx" in lines[0] and "bytes" in lines[0]
    assert not list((model / "onnx").glob("*"))
    if filler is not None:
      filler.unlink()
    assert score.main(argv) == 1  # room again: scored (one unreadable image)
    assert len(list((model / "onnx").glob("*.onnx"))) == 1
