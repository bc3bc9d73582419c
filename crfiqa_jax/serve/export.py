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

ONNX: the graph (crfiqa_jax.serve.onnx_graph) is written from the Flax variables by walking
the model's layer plan (crfiqa_jax.models.layer_plan), node by node, in NCHW: Conv,
BatchNormalization, PRelu, Add, Flatten (in C, H, W order, like the released PyTorch model,
so the FC weight is permuted back from the Flax (H, W, C) order), Gemm. The file is checked
with onnx.checker (full shape inference) and, at export, run in onnxruntime against the JAX
model.

StableHLO: `jax.export` of the same function (jitted Flax apply), with a symbolic batch
dimension; reload with `jax.export.deserialize(bytes).call(x)`, no model code needed. A
sidecar FILE.json holds the same metadata as the ONNX file's metadata_props.

crfiqa_jax.serve.onnx_predictor.OnnxPredictor runs the ONNX file with onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax import cli
from crfiqa_jax.serve import model_io, registry
from crfiqa_jax.serve.onnx_graph import (OUTPUTS, TOLERANCE, check_args, metadata, onnx_model,
                                         verify_onnx)

# ---------------------------------------------------------------------------------------
# StableHLO (jax.export).
# ---------------------------------------------------------------------------------------

def export_stablehlo(model, variables, info: dict, *, batch="dynamic", layout: str = "nchw",
                     outputs: Sequence[str] = OUTPUTS):
  """jax.export.Exported of x → outputs, the same function and input as `onnx_model`.

  Variables are baked in as float32 constants; the model computes in float32.
  """
  check_args(layout, outputs, batch)
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

def _parse_batch(s: str):
  if s == "dynamic":
    return s
  try:
    return int(s)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--batch must be 'dynamic' or an integer, got {s!r}")


def run(args) -> int:
  outputs = tuple(o.strip() for o in args.outputs.split(","))
  check_args(args.layout, outputs, args.batch)
  model, variables, info = model_io.load_model(args.checkpoint, args.arch)
  out = Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  kw = dict(batch=args.batch, layout=args.layout, outputs=outputs)
  if args.format == "onnx":
    out.write_bytes(onnx_model(model, variables, info, **kw).SerializeToString())
    diff = verify_onnx(out, model, variables, args.layout, outputs, args.batch,
                        int(info.get("image_size", 112)))
    print(f"onnxruntime vs JAX, max relative difference: {diff}", file=sys.stderr)
    if max(diff.values()) > TOLERANCE:
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
                 help="training workdir, exported model directory or released .pth, "
                      + registry.HELP)
  p.add_argument("--arch", default=None, help="architecture of a .pth (default: detect)")
  p.add_argument("--format", required=True, choices=["onnx", "stablehlo"],
                 help="onnx (insightface's input convention) or stablehlo")
  p.add_argument("--output", required=True, help="file to write")
  p.add_argument("--batch", type=_parse_batch, default="dynamic", help="dynamic (default) or N")
  p.add_argument("--layout", default="nchw", choices=["nchw", "nhwc"],
                 help="input layout of the exported function")
  p.add_argument("--outputs", default="embedding,quality",
                 help="comma-separated: quality | embedding,quality (default)")
  args = p.parse_args(argv)
  cli.quiet_logging()
  return cli.run(lambda: run(args))
