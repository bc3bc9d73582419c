"""ONNX and StableHLO export: equal to the JAX model (and to the released PyTorch model)."""

import builtins
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import checkpoints, convert, export, models, onnx_predictor
from crfiqa_jax.data import records, synthetic

onnx = pytest.importorskip("onnx", reason="the [export] extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")

TINY_WIDTHS = (8, 16, 32, 64)  # full depth of every arch, narrow so the suite stays fast


def random_variables(model, seed=0, size=112):
  """He-scaled random weights and non-trivial BN statistics, so a wrong mapping shows."""
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                       train=False))  # shapes only: no slow eager init
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = path[-1].key
    if name == "kernel":
      return rng.standard_normal(a.shape).astype(np.float32) * (1 / np.prod(a.shape[:-1])) ** 0.5
    if name == "alpha":
      return rng.uniform(0.1, 0.4, a.shape).astype(np.float32)
    if name in ("scale", "bias"):
      return (name == "scale") + 0.2 * rng.standard_normal(a.shape).astype(np.float32)
    if name == "mean":
      return 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)  # var

  return jax.tree_util.tree_map_with_path(fill, v)


@pytest.fixture(scope="module")
def images():
  """4 face-like synthetic crops (decoded JPEGs) then 3 uniform-noise images, uint8 [7, 112,
  112, 3]."""
  faces = [records.decode_image(s["image"]) for s in synthetic.samples(2, 2, seed=3, size=112)]
  noise = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
  return np.concatenate([np.stack(faces), noise])


def jax_reference(model, variables, images):
  x = (images.astype(np.float32) - 127.5) / 127.5
  emb, q = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return np.asarray(emb), np.asarray(q)


def assert_close(emb, q, emb_ref, q_ref):
  rel_q = np.abs(q - q_ref).max() / np.abs(q_ref).max()
  cos = (emb * emb_ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb_ref, axis=1)
  assert rel_q < 1e-4 and cos.min() >= 0.9999, (rel_q, cos.min())


def _info(arch, model):
  return {"arch": arch, "embedding_dim": model.embedding_dim, "image_size": 112}


@pytest.mark.parametrize("arch", ["iresnet_tiny", "iresnet18", "iresnet34", "iresnet50",
                                  "iresnet100"])
def test_onnx_and_stablehlo_equal_jax(arch, images, tmp_path):
  model = models.create_model(arch, widths=TINY_WIDTHS, embedding_dim=32)
  variables = random_variables(model)
  emb_ref, q_ref = jax_reference(model, variables, images)
  info = _info(arch, model)

  path = tmp_path / "m.onnx"
  path.write_bytes(export.onnx_model(model, variables, info).SerializeToString())
  pred = onnx_predictor.OnnxPredictor(path)
  assert (pred.image_size, pred.embedding_dim, pred.batch) == (112, 32, None)
  for sl in (slice(0, 7), slice(0, 1), slice(5, 6)):  # batch 7 and 1 from one file
    assert_close(*pred(images[sl]), emb_ref[sl], q_ref[sl])

  exported = jax.export.deserialize(
      export.export_stablehlo(model, variables, info).serialize())
  x = ((images.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
  for sl in (slice(0, 7), slice(0, 1)):
    emb, q = exported.call(x[sl])
    assert_close(np.asarray(emb), np.asarray(q), emb_ref[sl], q_ref[sl])


def test_onnx_graph_is_clean_nchw_and_nhwc():
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model)
  info = _info("iresnet_tiny", model)
  for layout, transposes in (("nchw", 0), ("nhwc", 1)):
    m = export.onnx_model(model, variables, info, layout=layout)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Transpose") == transposes, ops
    if layout == "nhwc":
      assert ops[0] == "Transpose"  # once, at the input
    # one Conv, BN and PRelu node per layer of the model: no decomposed activations
    n_convs = 1 + sum(2 + (j == 0) for n in model.stage_sizes for j in range(n))
    assert ops.count("Conv") == n_convs and ops.count("PRelu") == 1 + sum(model.stage_sizes)
    assert not ({"Where", "GreaterOrEqual", "Reshape", "Shape"} & set(ops))
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert dims(m.graph.input[0]) == (["N", 3, 112, 112] if layout == "nchw"
                                      else ["N", 112, 112, 3])
    assert [(o.name, dims(o)) for o in m.graph.output] == [("embedding", ["N", 64]),
                                                           ("quality", ["N"])]
    props = {p.key: p.value for p in m.metadata_props}
    assert props["arch"] == "iresnet_tiny" and props["layout"] == layout
    assert "(x - 127.5) / 127.5" in props["input"] and "crfiqa_jax_version" in props


def test_nhwc_quality_only_and_fixed_batch(images, tmp_path):
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, seed=2)
  emb_ref, q_ref = jax_reference(model, variables, images)
  path = tmp_path / "q.onnx"
  path.write_bytes(export.onnx_model(model, variables, _info("iresnet_tiny", model), batch=3,
                                     layout="nhwc", outputs=("quality",)).SerializeToString())
  pred = onnx_predictor.OnnxPredictor(path)
  assert (pred.batch, pred.embedding_dim, pred.nchw) == (3, 0, False)
  emb, q = pred(images)  # 7 images: chunks of 3, the last padded
  assert emb.shape == (7, 0)
  np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-4 * np.abs(q_ref).max())
  with pytest.raises(ValueError, match="uint8 RGB images"):
    pred(images.astype(np.float32))


def test_cli_stablehlo_from_converted_dir(tmp_path, images):
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, seed=4)
  convert.save_inference(tmp_path / "conv", variables, arch="iresnet_tiny", embedding_dim=64)
  out = tmp_path / "m.shlo"
  assert export.main([f"--checkpoint={tmp_path / 'conv'}", "--format=stablehlo",
                      f"--output={out}", "--layout=nhwc", "--outputs=quality"]) == 0
  exported = jax.export.deserialize(out.read_bytes())
  _, q_ref = jax_reference(model, variables, images)
  (q,) = exported.call((images.astype(np.float32) - 127.5) / 127.5)
  np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-4 * np.abs(q_ref).max())
  meta = json.loads((tmp_path / "m.shlo.json").read_text())
  assert meta["arch"] == "iresnet_tiny" and meta["outputs"] == "quality"


def test_onnx_from_released_pth_equals_pytorch(tmp_path, images, capsys):
  torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
  import torch_iresnet  # tests/torch_iresnet.py: the released layout, C,H,W flatten
  ref = torch_iresnet.randomize_(torch_iresnet.make("iresnet_tiny"), seed=5).eval()
  torch.save(ref.state_dict(), tmp_path / "32572backbone.pth")
  out = tmp_path / "released.onnx"
  assert export.main([f"--checkpoint={tmp_path / '32572backbone.pth'}", "--format=onnx",
                      f"--output={out}"]) == 0
  with torch.no_grad():
    x = torch.from_numpy(((images.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2))
    emb_t, q_t = (t.numpy() for t in ref(x))
  assert_close(*onnx_predictor.OnnxPredictor(out)(images), emb_t, q_t)


def test_cli_without_extra_prints_install_hint(monkeypatch, capsys, tmp_path):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name.split(".")[0] in ("onnx", "onnxruntime"):
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  rc = export.main(["--checkpoint=/nonexistent", "--format=onnx", f"--output={tmp_path}/m"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and 'pip install "crfiqa_jax[export]"' in err[0]


def test_cli_bad_outputs_is_one_line_error(capsys, tmp_path):
  rc = export.main(["--checkpoint=/nonexistent", "--format=stablehlo", "--outputs=score",
                    f"--output={tmp_path}/m"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "outputs must be" in err[0]


def test_score_cli_runs_the_onnx_file_alone(tmp_path, images, monkeypatch):
  from PIL import Image

  from crfiqa_jax import score
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, seed=6)
  _, q_ref = jax_reference(model, variables, images)
  path = tmp_path / "m.onnx"
  path.write_bytes(export.onnx_model(model, variables, _info("iresnet_tiny", model),
                                     batch=2).SerializeToString())
  (tmp_path / "faces").mkdir()
  for i, img in enumerate(images):
    Image.fromarray(img).save(tmp_path / "faces" / f"{i}.png")

  def no_flax(*a, **k):
    raise AssertionError("scoring an .onnx file must not build the Flax model")

  monkeypatch.setattr(checkpoints, "load_model", no_flax)
  monkeypatch.setattr(models, "create_model", no_flax)
  out = tmp_path / "q.csv"
  assert score.main([f"--checkpoint={path}", f"--input={tmp_path / 'faces'}",
                     f"--output={out}", "--batch-size=4"]) == 0
  rows = dict(line.split(",") for line in out.read_text().splitlines()[1:])
  q = np.array([float(rows[str(tmp_path / "faces" / f"{i}.png")]) for i in range(7)])
  np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-4 * np.abs(q_ref).max())


def test_predictor_refuses_a_broken_file(tmp_path):
  (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
  with pytest.raises(ValueError, match="not a model onnxruntime can load"):
    onnx_predictor.OnnxPredictor(tmp_path / "bad.onnx")


def test_bf16_model_exports_float32(images):
  """A bf16 config's model and weights export as float32 (weights rounded to bf16 once)."""
  model16 = models.create_model("iresnet_tiny", dtype=jnp.bfloat16)
  v16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), random_variables(model16, seed=7))
  info = _info("iresnet_tiny", model16)
  m = export.onnx_model(model16, v16, info)
  assert {t.data_type for t in m.graph.initializer if t.name != "squeeze_axes"} == {
      onnx.TensorProto.FLOAT}
  model32 = models.create_model("iresnet_tiny")
  emb_ref, q_ref = jax_reference(model32, jax.tree.map(lambda a: a.astype(np.float32), v16),
                                 images)
  sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
  x = ((images.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
  assert_close(*sess.run(["embedding", "quality"], {"input": x}), emb_ref, q_ref)
  emb, q = export.export_stablehlo(model16, v16, info).call(x)
  assert_close(np.asarray(emb), np.asarray(q), emb_ref, q_ref)
