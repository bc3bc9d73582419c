"""Export a CR-FIQA model to ONNX (for face pipelines) or to serialized StableHLO (jax.export).

    python -m crfiqa_jax.export --checkpoint=181952backbone.pth --format=onnx \\
        --output=crfiqa_l.onnx
    python -m crfiqa_jax.export --checkpoint=workdir/demo --format=stablehlo --output=q.shlo

The exported function takes what insightface's model zoo takes: float32 RGB faces aligned to
112×112, normalised by the caller as (x − 127.5) / 127.5, shape [N, 3, 112, 112] (`--layout=
nchw`, the default) or [N, 112, 112, 3] (`nhwc`), N dynamic unless `--batch=N`. It returns
`embedding` [N, D] (the un-normalised BN1d features) and `quality` [N] (the raw CR-FIQA
score, higher = better), or only `quality` with `--outputs=quality`. Weights are exported in
float32 whatever dtype the model trained in (bf16 configs included).

ONNX: the graph is written from the Flax variables by walking the model's layer plan
(crfiqa_jax.models.layer_plan), node by node, in NCHW: Conv, BatchNormalization, PRelu,
Add, Flatten (in C, H, W order, like the released PyTorch model, so the FC weight is
permuted back from the Flax (H, W, C) order), Gemm. A traced export
(jax2onnx 0.17.1) keeps the model's NHWC PReLU and wraps each one in two Transposes; it also
pins orbax-checkpoint < 0.11.37, which this package cannot install beside its own orbax.
The file is checked with onnx.checker (full shape inference) and, at export, run in
onnxruntime against the JAX model.

StableHLO: `jax.export` of the same function (jitted Flax apply), with a symbolic batch
dimension; reload with `jax.export.deserialize(bytes).call(x)`, no model code needed. A
sidecar FILE.json holds the same metadata as the ONNX file's metadata_props.

crfiqa_jax.onnx_predictor.OnnxPredictor runs the ONNX file with onnxruntime alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from crfiqa_jax import checkpoints, cli, models
from crfiqa_jax.onnx_predictor import onnxruntime

INPUT_CONVENTION = "RGB float32, aligned 112x112 (ArcFace template), (x - 127.5) / 127.5"
OPSET = 13  # Conv, BatchNormalization, PRelu, Gemm, Squeeze-with-axes: old runtimes run it
OUTPUTS = ("embedding", "quality")


def _onnx():
  """The onnx package (helper, numpy_helper and utils loaded), or cli.MissingExtra."""
  for sub in ("helper", "numpy_helper", "utils"):
    cli.optional_import(f"onnx.{sub}", "export", "ONNX export")
  return cli.optional_import("onnx", "export", "ONNX export")


def _version() -> str:
  from importlib import metadata as md
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


def _check_args(layout, outputs, batch):
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
    from onnx import numpy_helper
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.integer):  # bf16 (kind 'V'), f16, f64 → float32
      value = value.astype(np.float32)
    self.inits.append(numpy_helper.from_array(value, name))
    return name

  def op(self, op_type, inputs, name=None, **attrs):
    from onnx import helper
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
  onnx = _onnx()
  from onnx import TensorProto, helper
  _check_args(layout, outputs, batch)
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


# ---------------------------------------------------------------------------------------
# StableHLO (jax.export).
# ---------------------------------------------------------------------------------------

def export_stablehlo(model, variables, info: dict, *, batch="dynamic", layout: str = "nchw",
                     outputs: Sequence[str] = OUTPUTS):
  """jax.export.Exported of x → outputs, the same function and input as `onnx_model`.

  Variables are baked in as float32 constants; the model computes in float32.
  """
  import jax
  import jax.numpy as jnp
  _check_args(layout, outputs, batch)
  size = int(info.get("image_size", 112))
  model = model.clone(dtype=jnp.float32)
  variables = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)

  def fn(x):
    if layout == "nchw":
      x = jnp.transpose(x, (0, 2, 3, 1))
    emb, q = model.apply(variables, x, train=False)
    got = {"embedding": emb, "quality": q}
    return tuple(got[o] for o in outputs)

  b = "N" if batch == "dynamic" else str(batch)
  spec = f"{b}, 3, {size}, {size}" if layout == "nchw" else f"{b}, {size}, {size}, 3"
  shape = jax.ShapeDtypeStruct(jax.export.symbolic_shape(spec), jnp.float32)
  return jax.export.export(jax.jit(fn))(shape)


# ---------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------

def _verify_onnx(path, model, variables, layout, outputs, batch, size):
  """Max relative difference between onnxruntime and JAX on random inputs, per output."""
  import jax
  ort = onnxruntime()
  n = 2 if batch == "dynamic" else batch
  x = np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
  emb, q = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  feed = x.transpose(0, 3, 1, 2) if layout == "nchw" else x
  sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  got = dict(zip(outputs, sess.run(list(outputs), {"input": np.ascontiguousarray(feed)})))
  ref = {"embedding": np.asarray(emb), "quality": np.asarray(q)}
  return {o: float(np.abs(got[o] - ref[o]).max() / max(np.abs(ref[o]).max(), 1e-6))
          for o in outputs}


def _parse_batch(s: str):
  if s == "dynamic":
    return s
  try:
    return int(s)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or an integer, got {s!r}")


def run(args) -> int:
  outputs = tuple(o.strip() for o in args.outputs.split(","))
  if args.format == "onnx":  # fail before the (slow) model load
    _onnx(), onnxruntime()
  _check_args(args.layout, outputs, args.batch)
  model, variables, info = checkpoints.load_model(args.checkpoint, args.arch)
  out = Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  kw = dict(batch=args.batch, layout=args.layout, outputs=outputs)
  if args.format == "onnx":
    out.write_bytes(onnx_model(model, variables, info, **kw).SerializeToString())
    diff = _verify_onnx(out, model, variables, args.layout, outputs, args.batch,
                        int(info.get("image_size", 112)))
    print(f"onnxruntime vs JAX, max relative difference: {diff}", file=sys.stderr)
    if max(diff.values()) > 1e-4:
      print("error: the ONNX file does not reproduce the JAX model", file=sys.stderr)
      return 1
  else:
    out.write_bytes(export_stablehlo(model, variables, info, **kw).serialize())
    out.with_name(out.name + ".json").write_text(
        json.dumps(metadata(info, args.layout, outputs), indent=1))
  print(f"wrote {out} ({args.format}, {info['arch']}, {out.stat().st_size / 2**20:.1f} MiB)",
        file=sys.stderr)
  return 0


def main(argv=None) -> int:
  p = cli.parser("crfiqa_jax.export", __doc__,
                 "python -m crfiqa_jax.export --checkpoint=181952backbone.pth --format=onnx "
                 "--output=crfiqa_l.onnx\npython -m crfiqa_jax.export --checkpoint=runs/demo "
                 "--format=stablehlo --output=demo.shlo\n\n" + __doc__.split("\n\n")[2])
  p.add_argument("--checkpoint", required=True,
                 help="training workdir, exported model directory or released .pth")
  p.add_argument("--arch", default=None, help="architecture of a .pth (default: detect)")
  p.add_argument("--format", required=True, choices=["onnx", "stablehlo"])
  p.add_argument("--output", required=True, help="file to write")
  p.add_argument("--batch", type=_parse_batch, default="dynamic", help="dynamic (default) or N")
  p.add_argument("--layout", default="nchw", choices=["nchw", "nhwc"])
  p.add_argument("--outputs", default="embedding,quality",
                 help="comma-separated: quality | embedding,quality (default)")
  args = p.parse_args(argv)
  cli.quiet_logging()
  return cli.run(lambda: run(args))


if __name__ == "__main__":
  sys.exit(main())
