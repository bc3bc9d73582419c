"""ONNX and StableHLO export: equal to the JAX model (and to the released PyTorch model)."""

import json

import jax
import numpy as np
import pytest

from crfiqa_jax import models
from crfiqa_jax.serve import export
from crfiqa_jax.serve import model_io
from crfiqa_jax.serve import onnx_graph
from crfiqa_jax.serve import onnx_predictor
from helpers import (assert_close, face_like_images, jax_reference, model_info,
                     random_variables)


TINY_WIDTHS = (8, 16, 32, 64)  # full depth of every arch, narrow so the suite stays fast


@pytest.fixture(scope="module")
def images():
  return face_like_images()


@pytest.mark.parametrize("arch", ["iresnet_tiny", "iresnet18", "iresnet34", "iresnet50",
                                  "iresnet100"])
def test_onnx_and_stablehlo_equal_jax(arch, images, tmp_path):
  model = models.create_model(arch, widths=TINY_WIDTHS, embedding_dim=32)
  variables = random_variables(model)
  emb_ref, q_ref = jax_reference(model, variables, images)
  info = model_info(arch, model)

  path = tmp_path / "m.onnx"
  path.write_bytes(onnx_graph.onnx_model(model, variables, info).SerializeToString())
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


def test_nhwc_quality_only_and_fixed_batch(images, tmp_path):
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, seed=2)
  emb_ref, q_ref = jax_reference(model, variables, images)
  path = tmp_path / "q.onnx"
  path.write_bytes(onnx_graph.onnx_model(model, variables, model_info("iresnet_tiny", model), batch=3,
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
  model_io.save_exported(tmp_path / "conv", variables, arch="iresnet_tiny", embedding_dim=64)
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


def test_cli_bad_outputs_is_one_line_error(capsys, tmp_path):
  rc = export.main(["--checkpoint=/nonexistent", "--format=stablehlo", "--outputs=score",
                    f"--output={tmp_path}/m"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "outputs must be" in err[0]


def test_score_cli_runs_the_onnx_file_alone(tmp_path, images, monkeypatch):
  from PIL import Image

  from crfiqa_jax.serve import score
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, seed=6)
  _, q_ref = jax_reference(model, variables, images)
  path = tmp_path / "m.onnx"
  path.write_bytes(onnx_graph.onnx_model(model, variables, model_info("iresnet_tiny", model),
                                     batch=2).SerializeToString())
  (tmp_path / "faces").mkdir()
  for i, img in enumerate(images):
    Image.fromarray(img).save(tmp_path / "faces" / f"{i}.png")

  def no_flax(*a, **k):
    raise AssertionError("scoring an .onnx file must not build the Flax model")

  monkeypatch.setattr(model_io, "load_model", no_flax)
  monkeypatch.setattr(models, "create_model", no_flax)
  out = tmp_path / "q.csv"
  assert score.main([f"--checkpoint={path}", f"--input={tmp_path / 'faces'}",
                     f"--output={out}", "--batch-size=4", "--precision=fp32"]) == 0
  rows = dict(line.split(",") for line in out.read_text().splitlines()[1:])
  q = np.array([float(rows[str(tmp_path / "faces" / f"{i}.png")]) for i in range(7)])
  np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-4 * np.abs(q_ref).max())
