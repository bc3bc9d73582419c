"""An ONNX file run by OpenVINO through the predictor protocol: equal to the Flax model in
fp32, fixed-batch files fed in chunks, results read lazily and never overwritten by later
calls, compiled models cached, broken files and a missing extra refused clearly."""

import importlib.util
import sys

import numpy as np
import pytest

from crfiqa_jax import cli, models
from crfiqa_jax.serve import onnx_graph, openvino_predictor
from helpers import jax_reference, model_info, random_variables

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="needs the [openvino] extra (openvino)")


@pytest.fixture(scope="module")
def tiny():
  model = models.create_model("iresnet_tiny")
  return model, random_variables(model, seed=11)


def _write(path, model, variables, layout="nchw", batch="dynamic", outputs=onnx_graph.OUTPUTS):
  path.write_bytes(onnx_graph.onnx_model(model, variables, model_info("iresnet_tiny", model),
                                         layout=layout, batch=batch,
                                         outputs=outputs).SerializeToString())
  return path


def test_missing_extra_is_one_clear_line(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
  with pytest.raises(cli.MissingExtra, match=r"crfiqa_jax\[openvino\]"):
    openvino_predictor.OpenVinoPredictor(tmp_path / "m.onnx")


@needs_openvino
def test_predictor_refuses_a_broken_file(tmp_path):
  (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
  with pytest.raises(ValueError, match="not a model OpenVINO can load"):
    openvino_predictor.OpenVinoPredictor(tmp_path / "bad.onnx")
  with pytest.raises(FileNotFoundError):
    openvino_predictor.OpenVinoPredictor(tmp_path / "none.onnx")
  with pytest.raises(ValueError, match="choose one of"):
    openvino_predictor.OpenVinoPredictor(tmp_path / "bad.onnx", "fp16")


@needs_openvino
@pytest.mark.parametrize("layout,batch", [("nchw", "dynamic"), ("nhwc", 4)])
def test_predictor_equals_the_flax_model_in_fp32(tmp_path, tiny, layout, batch):
  model, variables = tiny
  path = _write(tmp_path / "m.onnx", model, variables, layout, batch)
  pred = openvino_predictor.OpenVinoPredictor(path, "fp32", threads=2, cache_dir=tmp_path / "c")
  assert pred.image_size == 112 and pred.embedding_dim == 64
  assert pred.batch_multiple == (1 if batch == "dynamic" else batch)
  imgs = np.random.default_rng(0).integers(0, 255, (6, 112, 112, 3), dtype=np.uint8)
  emb, q = (np.asarray(a) for a in pred(imgs))  # batch 4: two chunks, the last one padded
  emb_ref, q_ref = jax_reference(model, variables, imgs)
  assert emb.shape == (6, 64) and q.shape == (6,) and q.dtype == np.float32
  np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-4 * np.abs(q_ref).max())
  np.testing.assert_allclose(emb, emb_ref, rtol=0, atol=1e-4 * np.abs(emb_ref).max())
  assert any((tmp_path / "c").iterdir())  # the compiled model, for the next process
  again = openvino_predictor.OpenVinoPredictor(path, "fp32", threads=2,
                                               cache_dir=tmp_path / "c")
  np.testing.assert_array_equal(np.asarray(again(imgs)[1]), q)
  with pytest.raises(ValueError, match="expected uint8 RGB images"):
    pred(imgs.astype(np.float32))
  empty = pred(imgs[:0])
  assert np.asarray(empty[0]).shape == (0, 64) and np.asarray(empty[1]).shape == (0,)


@needs_openvino
def test_calls_in_flight_keep_their_own_results(tmp_path, tiny):
  """More calls than requests before any result is read: each call's results stay its own
  (a request is read out before it is reused)."""
  model, variables = tiny
  path = _write(tmp_path / "m.onnx", model, variables)
  pred = openvino_predictor.OpenVinoPredictor(path, "fp32", threads=2)
  rng = np.random.default_rng(3)
  batches = [rng.integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
             for _ in range(openvino_predictor.REQUESTS + 3)]
  pending = [pred(b) for b in batches]
  for b, (_, q) in zip(batches, pending):
    np.testing.assert_allclose(np.asarray(q), jax_reference(model, variables, b)[1],
                               rtol=0, atol=1e-4)


@needs_openvino
def test_a_quality_only_file_gives_empty_embeddings(tmp_path, tiny):
  model, variables = tiny
  path = _write(tmp_path / "q.onnx", model, variables, outputs=("quality",))
  pred = openvino_predictor.OpenVinoPredictor(path)
  imgs = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
  emb, q = pred(imgs)
  assert pred.embedding_dim == 0 and np.asarray(emb).shape == (2, 0)
  np.testing.assert_allclose(np.asarray(q), jax_reference(model, variables, imgs)[1],
                             rtol=0, atol=1e-4)
