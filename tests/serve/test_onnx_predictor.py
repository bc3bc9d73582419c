"""An ONNX file run by onnxruntime through the predictor protocol: uint8 in, normalisation
and layout inside, fixed-batch files fed in chunks; broken files refused clearly."""

import numpy as np
import pytest

from crfiqa_jax import models
from crfiqa_jax.serve import onnx_graph, onnx_predictor
from helpers import jax_reference, model_info, random_variables


def test_predictor_refuses_a_broken_file(tmp_path):
  (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
  with pytest.raises(ValueError, match="not a model onnxruntime can load"):
    onnx_predictor.OnnxPredictor(tmp_path / "bad.onnx")


@pytest.mark.parametrize("layout,batch", [("nchw", "dynamic"), ("nhwc", 4)])
def test_predictor_equals_the_flax_model(tmp_path, layout, batch):
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, seed=11)
  path = tmp_path / "m.onnx"
  path.write_bytes(onnx_graph.onnx_model(model, variables, model_info("iresnet_tiny", model),
                                         layout=layout, batch=batch).SerializeToString())
  pred = onnx_predictor.OnnxPredictor(path)
  assert pred.image_size == 112 and pred.embedding_dim == 64
  assert pred.batch_multiple == (1 if batch == "dynamic" else batch)
  imgs = np.random.default_rng(0).integers(0, 255, (6, 112, 112, 3), dtype=np.uint8)
  emb, q = pred(imgs)  # 6 images into a batch-4 file: two chunks, the last one padded
  emb_ref, q_ref = jax_reference(model, variables, imgs)
  assert emb.shape == (6, 64) and q.shape == (6,)
  np.testing.assert_allclose(q, q_ref, rtol=0, atol=1e-4 * np.abs(q_ref).max())
  np.testing.assert_allclose(emb, emb_ref, rtol=0, atol=1e-4 * np.abs(emb_ref).max())
  assert pred.metadata["arch"] == "iresnet_tiny"
  with pytest.raises(ValueError, match="expected uint8 RGB images"):
    pred(imgs.astype(np.float32))
