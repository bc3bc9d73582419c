"""The ONNX graph of an iResNet, written node by node from its Flax variables.

`onnx_model(model, variables, info)` walks the model's layer plan (crfiqa_jax.models.
layer_plan) in NCHW: Conv, BatchNormalization, PRelu, Add, Flatten (C, H, W order, like the
released PyTorch model, so the FC weight is permuted back from Flax's H, W, C order), Gemm.
`verify_onnx` runs a written file in onnxruntime against the JAX model. The command line
and the StableHLO export are crfiqa_jax.serve.export; the onnxruntime engine
(crfiqa_jax.serve.engines) uses this module directly.
"""

from __future__ import annotations

from typing import Sequence

from importlib import metadata as md

import jax
import numpy as np
import onnx
import onnx.checker
import onnx.utils
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from crfiqa_jax import models

INPUT_CONVENTION = "RGB float32, aligned 112x112 (ArcFace template), (x - 127.5) / 127.5"
OPSET = 13  # Conv, BatchNormalization, PRelu, Gemm, Squeeze-with-axes: old runtimes run it
OUTPUTS = ("embedding", "quality")
TOLERANCE = 1e-4  # the largest relative difference from the JAX model a written file may have


def _version() -> str:
  try:
    return md.version("crfiqa_jax")
  except md.PackageNotFoundError:  # run from a source tree that was never installed
    return "unknown"


def metadata(info: dict, layout: str, outputs: Sequence[str]) -> dict[str, str]:
  """The facts a deployment needs, as strings (ONNX metadata_props, StableHLO sidecar)."""
  size = int(info.get("image_size", 112))
  shape = "[N, 3, {0}, {0}]" if layout == "nchw" else "[N, {0}, {0}, 3]"
  return {"arch": str(info["arch"]), "embedding_dim": str(info["embedding_dim"]),
          "image_size": str(size), "input": f"{INPUT_CONVENTION}, {shape.format(size)}",
          "layout": layout, "outputs": ",".join(outputs), "weights": "float32",
          "quality": "raw CR-FIQA regression output, higher = better",
          "source": str(info.get("source", "")), "crfiqa_jax_version": _version()}


def check_args(layout, outputs, batch):
  if layout not in ("nchw", "nhwc"):
    raise ValueError(f"layout must be nchw or nhwc, got {layout!r}")
  if not outputs or any(o not in OUTPUTS for o in outputs) or len(set(outputs)) != len(outputs):
    raise ValueError(f"outputs must be distinct names from {OUTPUTS}, got {list(outputs)}")
  if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
    raise ValueError(f"batch must be 'dynamic' or a positive int, got {batch!r}")


# ---------------------------------------------------------------------------------------
# ONNX: the iResNet graph, written from the variables in NCHW.
# ---------------------------------------------------------------------------------------

class _Graph:
  """Collects nodes and float32 initializers; each op returns its output's name."""

  def __init__(self):
    self.nodes, self.inits, self._n = [], [], 0

  def const(self, name, value):
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.integer):  # bf16 (kind 'V'), f16, f64 → float32
      value = value.astype(np.float32)
    self.inits.append(numpy_helper.from_array(value, name))
    return name

  def op(self, op_type, inputs, name=None, **attrs):
    self._n += 1
    out = name or f"{op_type.lower()}_{self._n}"
    self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{self._n}",
                                       **attrs))
    return out

  def run(self, plan, x, params, stats):
    """The layers of a plan (crfiqa_jax.models.layer_plan) in NCHW; returns the output."""
    channels = None
    for layer in plan:
      p, s, name = params.get(layer.flax, {}), stats.get(layer.flax, {}), layer.torch
      if layer.op == "conv":
        k = np.asarray(p["kernel"], np.float32).transpose(3, 2, 0, 1)  # HWIO → OIHW
        (top, bottom), (left, right) = models.torch_padding(layer.kernel)
        x = self.op("Conv", [x, self.const(f"{name}.weight", k)],
                    kernel_shape=list(k.shape[2:]), strides=[layer.stride] * 2,
                    pads=[top, left, bottom, right])
      elif layer.op == "bn":
        inputs = [self.const(f"{name}.{n}", v) for n, v in (
            ("weight", p["scale"]), ("bias", p["bias"]), ("running_mean", s["mean"]),
            ("running_var", s["var"]))]
        x = self.op("BatchNormalization", [x, *inputs], epsilon=models.BN_EPS)
      elif layer.op == "prelu":  # slopes [C, 1, 1] over [N, C, H, W], as torch.nn.PReLU
        slope = np.asarray(p["alpha"], np.float32).reshape(-1, 1, 1)
        x = self.op("PRelu", [x, self.const(f"{name}.weight", slope)])
      elif layer.op == "flatten":  # (C, H, W) order, like PyTorch
        x, channels = self.op("Flatten", [x], axis=1), layer.features
      elif layer.op == "dense":
        w = np.asarray(p["kernel"], np.float32)
        if channels is not None:  # Flax flattened (H, W, C)
          w, channels = models.fc_kernel_order(w, channels, to="torch"), None
        x = self.op("Gemm", [x, self.const(f"{name}.weight", w),
                             self.const(f"{name}.bias", p["bias"])])
      elif layer.op == "residual":
        x = self.op("Add", [self.run(layer.body, x, p, s), self.run(layer.shortcut, x, p, s)])
      elif layer.op != "dropout":
        raise ValueError(f"no ONNX form for layer op {layer.op!r}")
    return x


def onnx_model(model, variables, info: dict, *, batch="dynamic", layout: str = "nchw",
               outputs: Sequence[str] = OUTPUTS):
  """The onnx.ModelProto of `model.apply(variables, x, train=False)` (see the module doc).

  Input `input` [N, 3, S, S] (nchw) or [N, S, S, 3] (nhwc), normalised RGB; outputs in the
  order of `outputs`, `embedding` [N, D] and `quality` [N].
  """
  check_args(layout, outputs, batch)
  p, s = variables["params"], variables["batch_stats"]
  size, dim = int(info.get("image_size", 112)), int(info["embedding_dim"])
  n = "N" if batch == "dynamic" else batch
  g = _Graph()
  in_shape = [n, 3, size, size] if layout == "nchw" else [n, size, size, 3]
  x = "input"
  if layout == "nhwc":
    x = g.op("Transpose", [x], perm=[0, 3, 1, 2])  # once; everything after runs in NCHW
  emb = g.run(model.plan(), x, p, s)
  q = g.run((models.QUALITY_HEAD,), emb, p, s)
  g.op("Identity", [emb], name="embedding")
  g.op("Squeeze", [q, g.const("squeeze_axes", np.array([1], np.int64))], name="quality")
  graph = helper.make_graph(
      g.nodes, f"crfiqa_{info['arch']}",
      [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
      [helper.make_tensor_value_info(o, TensorProto.FLOAT, [n, dim] if o == "embedding" else [n])
       for o in outputs], initializer=g.inits)
  m = helper.make_model(graph, producer_name="crfiqa_jax",
                        opset_imports=[helper.make_opsetid("", OPSET)],
                        doc_string="CR-FIQA face image quality; see metadata_props")
  m.ir_version = 7  # the IR of opset 13: runtimes from 2021 on load it
  helper.set_model_props(m, metadata(info, layout, outputs))
  if len(outputs) < len(OUTPUTS):  # drop the nodes only the omitted output used
    m = onnx.utils.Extractor(m).extract_model(["input"], list(outputs))
    m.ir_version = 7
    helper.set_model_props(m, metadata(info, layout, outputs))
  onnx.checker.check_model(m, full_check=True)  # also strict shape inference
  return m


def verify_onnx(path, model, variables, layout, outputs, batch, size):
  """Max relative difference between onnxruntime and JAX on random inputs, per output."""
  n = 2 if batch == "dynamic" else batch
  x = np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  emb, q = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  feed = x.transpose(0, 3, 1, 2) if layout == "nchw" else x
  sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  got = dict(zip(outputs, sess.run(list(outputs), {"input": np.ascontiguousarray(feed)})))
  ref = {"embedding": np.asarray(emb), "quality": np.asarray(q)}
  return {o: float(np.abs(got[o] - ref[o]).max() / max(np.abs(ref[o]).max(), 1e-6))
          for o in outputs}
