"""The ONNX graph written from the layer plan: clean NCHW (or one transpose for NHWC), one
node per layer, strict shape inference, metadata; float32 whatever the model computed in."""

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from crfiqa_jax import models
from crfiqa_jax.serve import export, onnx_graph
from helpers import (assert_close, face_like_images, jax_reference, model_info,
                     random_variables)


@pytest.fixture(scope="module")
def images():
  return face_like_images()


def test_onnx_graph_is_clean_nchw_and_nhwc():
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model)
  info = model_info("iresnet_tiny", model)
  for layout, transposes in (("nchw", 0), ("nhwc", 1)):
    m = onnx_graph.onnx_model(model, variables, info, layout=layout)
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


def test_bf16_model_exports_float32(images):
  """A bf16 config's model and weights export as float32 (weights rounded to bf16 once)."""
  model16 = models.create_model("iresnet_tiny", dtype=jnp.bfloat16)
  v16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), random_variables(model16, seed=7))
  info = model_info("iresnet_tiny", model16)
  m = onnx_graph.onnx_model(model16, v16, info)
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


def test_verify_onnx_measures_the_difference(tmp_path):
  model = models.create_model("iresnet_tiny")
  variables = random_variables(model, seed=9)
  path = tmp_path / "m.onnx"
  path.write_bytes(onnx_graph.onnx_model(model, variables, model_info("iresnet_tiny", model))
                   .SerializeToString())
  diff = onnx_graph.verify_onnx(path, model, variables, "nchw", onnx_graph.OUTPUTS,
                                "dynamic", 112)
  assert set(diff) == {"embedding", "quality"} and max(diff.values()) < onnx_graph.TOLERANCE
  other = jax.tree.map(lambda a: a * 1.5, variables)  # another model: the check must see it
  assert max(onnx_graph.verify_onnx(path, model, other, "nchw", onnx_graph.OUTPUTS,
                                    "dynamic", 112).values()) > 0.01


def test_bad_arguments_are_refused():
  for layout, outputs, batch, match in (("nchwc", ("quality",), "dynamic", "layout"),
                                        ("nchw", ("score",), "dynamic", "outputs"),
                                        ("nchw", ("quality",), 0, "batch")):
    with pytest.raises(ValueError, match=match):
      onnx_graph.check_args(layout, outputs, batch)
