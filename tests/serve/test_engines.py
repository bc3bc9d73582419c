"""The scoring engines (crfiqa_jax.serve.engines): the host rule of `auto` on faked CPU
flags, every engine and precision this host offers keeps the ranking of fp32 JAX, the
float32 engines equal JAX, the ONNX cache is keyed by the weights, and the streaming
guarantees (order, failures, resume, process slices) hold on every engine and precision;
a cache write refused for space is one error line."""

import contextlib
import csv
import importlib.util
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from crfiqa_jax import cli, models
from crfiqa_jax.data import codecs, sources, synthetic
from crfiqa_jax.serve import engines
from crfiqa_jax.serve import export
from crfiqa_jax.serve import inference
from crfiqa_jax.serve import model_io
from crfiqa_jax.serve import score
from crfiqa_jax.serve import scorer
from helpers import (FULL_DISK, fill, file_size_limit, jax_reference, random_variables,
                     small_filesystem)


SIZE = 32
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO,
                                    reason="needs the [openvino] extra (openvino)")
PAIRS = [("jax", "fp32"), ("jax", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
         ("openvino", "bf16")]


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


def _fake_host(monkeypatch, flags, openvino=True, backend="cpu"):
  monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset(flags))
  monkeypatch.setattr(engines, "have_openvino", lambda: openvino)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)


def test_cpu_flags_are_read_from_cpuinfo():
  text = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\nbogomips\t: 1\n"
  assert engines.parse_flags(text) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}
  assert engines.parse_flags("processor : 0\n") == frozenset()
  assert engines.cpu_flags() == engines.parse_flags(open("/proc/cpuinfo").read())


def test_auto_rule_without_bfloat16_units_is_the_float32_choice(monkeypatch):
  r50, tiny = models.create_model("iresnet50"), models.create_model("iresnet_tiny")
  _fake_host(monkeypatch, {"avx2", "fma", "avx512f", "avx512_vnni"})
  assert engines.choose("auto", "auto", r50) == ("onnxruntime", "fp32")
  assert engines.choose("auto", "auto", tiny) == ("jax", "fp32")  # XLA wins on narrow nets
  assert engines.choose("openvino", "auto", r50) == ("openvino", "fp32")
  assert engines.choose("auto", "bf16", r50) == ("jax", "bf16")
  assert engines.choose("auto", "auto", onnx_only=True) == ("onnxruntime", "fp32")
  with pytest.raises(ValueError, match="needs a CPU with AMX or AVX512-BF16"):
    engines.choose("openvino", "bf16", r50)
  assert ("openvino", "bf16") not in engines.offered(r50)


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_rule_with_bfloat16_units_is_openvino_bf16(monkeypatch, flag):
  r50, tiny = models.create_model("iresnet50"), models.create_model("iresnet_tiny")
  _fake_host(monkeypatch, {"avx2", flag})
  for model in (r50, tiny, None):
    assert engines.choose("auto", "auto", model) == ("openvino", "bf16")
  assert engines.choose("auto", "fp32", r50) == ("onnxruntime", "fp32")
  assert engines.choose("openvino", "auto", tiny) == ("openvino", "bf16")
  assert engines.choose("jax", "auto", tiny) == ("jax", "fp32")
  assert engines.choose("auto", "auto", onnx_only=True) == ("openvino", "bf16")
  assert engines.offered(r50)[-1] == ("openvino", "bf16")
  # The model's embeddings as FR features: float32 unless bf16 is asked for.
  assert engines.choose("auto", "auto", r50, exact=True) == ("onnxruntime", "fp32")
  assert engines.choose("auto", "auto", tiny, exact=True) == ("jax", "fp32")
  assert engines.choose("openvino", "auto", tiny, exact=True) == ("openvino", "fp32")
  assert engines.choose("auto", "bf16", tiny, exact=True) == ("openvino", "bf16")
  with pytest.raises(ValueError, match="onnxruntime runs fp32 only"):
    engines.choose("onnxruntime", "bf16", r50)
  with pytest.raises(ValueError, match="int8 is not offered"):
    engines.choose("auto", "int8", r50)
  with pytest.raises(ValueError, match="not --engine=jax"):
    engines.choose("jax", "auto", onnx_only=True)
  # Without the extra: today's float32 choice, and a clear error when openvino is asked for.
  monkeypatch.setattr(engines, "have_openvino", lambda: False)
  assert engines.choose("auto", "auto", r50) == ("onnxruntime", "fp32")
  assert engines.choose("auto", "auto", tiny) == ("jax", "fp32")
  assert engines.choose("auto", "bf16", tiny) == ("jax", "bf16")
  with pytest.raises(cli.MissingExtra, match=r"crfiqa_jax\[openvino\]"):
    engines.choose("openvino", "auto", r50)
  # GPU and TPU hosts keep JAX; other models than iResNets too.
  _fake_host(monkeypatch, {flag}, backend="gpu")
  assert engines.choose("auto", "auto", r50) == ("jax", "fp32")
  _fake_host(monkeypatch, {flag})
  assert engines.choose("auto", "auto", object()) == ("jax", "fp32")
  with pytest.raises(ValueError, match="needs an iResNet"):
    engines.choose("openvino", "auto", object())
  with pytest.raises(ValueError, match="choose one of"):
    engines.choose("tensorrt")


@needs_openvino
def test_the_host_rule_agrees_with_openvino():
  from crfiqa_jax.serve import openvino_predictor
  assert engines.bf16_cpu() == openvino_predictor.bf16_supported()


def _fitted(model, variables, images):
  """variables with BatchNorm statistics of `images` (eval mode then normalises them as
  training mode would), so the random net's features vary across faces as a trained one's
  do: one training-mode pass from zero statistics, divided by (1 − momentum)."""
  zero = jax.tree.map(np.zeros_like, variables["batch_stats"])
  _, new = model.clone(dropout=0.0).apply(
      {"params": variables["params"], "batch_stats": zero}, models.normalize(images),
      train=True, mutable=["batch_stats"])
  scale = 1.0 / (1.0 - models.iresnet.BN_MOMENTUM)
  return {"params": variables["params"],
          "batch_stats": jax.tree.map(lambda s: np.asarray(s) * scale, new["batch_stats"])}


def _faces(n, seed, size=64):
  return np.stack([codecs.decode_image(s["image"])
                   for s in synthetic.samples(n // 4, 4, seed=seed, size=size)])


def test_every_offered_engine_and_precision_keeps_the_ranking(tmp_path):
  """Quality Spearman and embedding cosine ≥ 0.999 against fp32 JAX on 256 synthetic faces
  of every severity, for each (engine, precision) this host offers; float32 within 1e-4."""
  model = models.create_model("iresnet_tiny", embedding_dim=32)
  variables = _fitted(model, random_variables(model, 64, 0), _faces(64, seed=8))
  faces = _faces(256, seed=9)
  emb_ref, q_ref = jax_reference(model, variables, faces)
  info = {"arch": "iresnet_tiny", "embedding_dim": 32, "image_size": 64}
  offered = engines.offered(model)
  assert ("jax", "bf16") in offered and ("onnxruntime", "fp32") in offered
  for engine, precision in offered:
    pred = engines.make_predictor(model, variables, info, engine=engine,
                                  precision=precision, source=tmp_path)
    assert (pred.engine, pred.precision) == (engine, precision)
    emb, q = scorer.Scorer(pred, batch_size=64).embed(faces, features="raw")
    cos = (emb * emb_ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb_ref, axis=1)
    assert stats.spearmanr(q, q_ref)[0] >= 0.999, (engine, precision)
    assert cos.min() >= 0.999, (engine, precision)
    if precision == "fp32":
      assert np.abs(q - q_ref).max() / np.abs(q_ref).max() < 1e-4, engine
    else:  # bfloat16 really ran: not the float32 numbers
      assert np.abs(q - q_ref).max() / np.abs(q_ref).max() > 1e-4, engine


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


def test_unchanged_model_files_skip_reading_the_variables(setup, tmp_path, monkeypatch):
  """An exported directory's next runs take its ONNX file from the `.files` note without
  reading the variables; rewritten or replaced variable files are read again, and replaced
  weights get their own ONNX file."""
  model, variables, _, _, imgs = setup
  d = model_io.save_exported(tmp_path / "m", variables, arch="iresnet_tiny",
                             embedding_dim=16, image_size=SIZE)
  want = scorer.Scorer(engines.load_predictor(d, engine="onnxruntime"))(imgs)
  reads = []
  real = model_io.load_model
  monkeypatch.setattr(model_io, "load_model", lambda *a, **k: reads.append(a) or real(*a, **k))
  again = engines.load_predictor(d, engine="onnxruntime")
  assert reads == []
  np.testing.assert_array_equal(scorer.Scorer(again)(imgs), want)
  engines.load_predictor(d, engine="jax")  # no ONNX file: the variables
  assert len(reads) == 1

  # The same bytes written anew (another modification time and inode): read once more.
  f = max((p for p in (d / model_io.VARIABLES_DIR).rglob("*") if p.is_file()),
          key=lambda p: p.stat().st_size)
  data = f.read_bytes()
  f.unlink()
  f.write_bytes(data)
  engines.load_predictor(d, engine="onnxruntime")
  engines.load_predictor(d, engine="onnxruntime")
  assert len(reads) == 2

  # Other weights copied in with their modification times: read, and scored as themselves.
  changed = jax.tree.map(np.array, variables)
  changed["params"]["qs"]["bias"] = changed["params"]["qs"]["bias"] + 1.0
  other = model_io.save_exported(tmp_path / "other", changed, arch="iresnet_tiny",
                                 embedding_dim=16, image_size=SIZE)
  shutil.rmtree(d / model_io.VARIABLES_DIR)
  shutil.copytree(other / model_io.VARIABLES_DIR, d / model_io.VARIABLES_DIR)
  pred = engines.load_predictor(d, engine="onnxruntime")
  assert len(reads) == 3
  np.testing.assert_allclose(scorer.Scorer(pred)(imgs), reference(model, changed, imgs)[1],
                             rtol=1e-4, atol=1e-4)


def _score(pred, faces, out, **kw):
  names = score.list_inputs(faces)
  source = sources.files_source(names, image_size=SIZE)
  failures = score.score_to_csv(pred, names, source, out, batch_size=4, progress=False, **kw)
  return names, failures


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


@pytest.mark.parametrize("engine,precision", PAIRS)
def test_order_failures_resume_and_slices_hold(setup, tmp_path, engine, precision):
  model, variables, ckpt, faces, imgs = setup
  if engine == "openvino" and not HAVE_OPENVINO:
    pytest.skip("needs the [openvino] extra (openvino)")
  if (engine, precision) not in engines.offered(model):  # bf16 without bfloat16 units
    with pytest.raises(ValueError, match="needs a CPU with AMX or AVX512-BF16"):
      engines.load_predictor(ckpt, engine=engine, precision=precision)
    return
  pred = engines.load_predictor(ckpt, engine=engine, precision=precision)
  assert (pred.engine, pred.precision) == (engine, precision)
  full = tmp_path / "full.csv"
  names, failures = _score(pred, faces, full)
  rows = _rows(full)
  assert [r[0] for r in rows[1:]] == names and names[6].endswith("005b.jpg")
  assert list(failures) == [6] and rows[7][1] == ""
  q = np.array([float(r[1]) for r in rows[1:] if r[1]])
  q_ref = reference(model, variables, imgs)[1]
  tol = 1e-4 if precision == "fp32" else 0.05  # bfloat16: 8 bits of mantissa
  np.testing.assert_allclose(q, q_ref, rtol=0, atol=tol * np.abs(q_ref).max())

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


def test_cli_engine_and_precision_flags(setup, tmp_path, capsys):
  _, _, ckpt, faces, _ = setup
  out = {}
  pairs = [("jax", "fp32"), ("onnxruntime", "auto"), ("auto", "fp32"), ("jax", "bf16")]
  for engine, precision in pairs:
    rc = score.main([f"--checkpoint={ckpt}", f"--input={faces}", f"--engine={engine}",
                     f"--precision={precision}", f"--output={tmp_path / engine}{precision}.csv"])
    assert rc == 1  # the broken file
    out[engine, precision] = np.array([float(r[1]) if r[1] else np.nan for r in
                                       _rows(tmp_path / f"{engine}{precision}.csv")[1:]])
  jax32 = out["jax", "fp32"]
  np.testing.assert_allclose(out["onnxruntime", "auto"], jax32, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(out["auto", "fp32"], jax32)  # the tiny net in fp32: JAX
  ok = np.isfinite(jax32)
  assert 1e-5 < np.abs(out["jax", "bf16"] - jax32)[ok].max() < 0.05 * np.abs(jax32[ok]).max()
  onnx_path = next((ckpt / "onnx").glob("*.onnx"))
  for args, message in [(["--engine=jax"], "runs on onnxruntime or openvino"),
                        (["--precision=int8"], "int8 is not offered"),
                        (["--engine=onnxruntime", "--precision=bf16"], "runs fp32 only")]:
    rc = score.main([f"--checkpoint={onnx_path}", f"--input={faces}",
                     f"--output={tmp_path / 'x.csv'}"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
  s = scorer.Scorer.from_checkpoint(ckpt, engine="jax", precision="bf16")
  assert (s.predictor.engine, s.predictor.precision) == ("jax", "bf16")


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
