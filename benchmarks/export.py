"""Exported-model speed: images/s of quality+embedding inference at 112×112 on this machine,
for the JAX model (jitted eval-mode forward, uint8 → normalised inside), its StableHLO export
reloaded with jax.export.deserialize, and its ONNX export in onnxruntime (`OnnxPredictor`,
CPU provider, all cores). Every path includes the uint8 → float normalisation.

    python benchmarks/export.py [--arch iresnet50] [--batch 32] [--batches 5]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def rate(fn, imgs, batches):
  fn(imgs)  # compile / warm up
  t = time.perf_counter()
  for _ in range(batches):
    fn(imgs)
  return len(imgs) * batches / (time.perf_counter() - t)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="iresnet50")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--batches", type=int, default=5)
  args = p.parse_args()
  import jax
  import jax.numpy as jnp

  from crfiqa_jax import models
  from crfiqa_jax.serve import export
  from crfiqa_jax.serve import onnx_graph
  from crfiqa_jax.serve import onnx_predictor
  model = models.create_model(args.arch)
  variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))()
  info = {"arch": args.arch, "embedding_dim": model.embedding_dim, "image_size": 112}
  imgs = np.random.default_rng(0).integers(0, 255, (args.batch, 112, 112, 3), dtype=np.uint8)
  label = f"{args.arch} batch {args.batch}"

  fwd = jax.jit(lambda v, x: model.apply(v, models.normalize(x), train=False))
  jax_ips = rate(lambda x: jax.block_until_ready(fwd(variables, x)), imgs, args.batches)
  print(f"JAX          {label}: {jax_ips:7.1f} images/s")

  shlo = jax.export.deserialize(export.export_stablehlo(model, variables, info).serialize())
  norm = jax.jit(lambda x: jnp.transpose(models.normalize(x), (0, 3, 1, 2)))
  shlo_ips = rate(lambda x: jax.block_until_ready(shlo.call(norm(x))), imgs, args.batches)
  print(f"StableHLO    {label}: {shlo_ips:7.1f} images/s")

  with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "m.onnx"
    path.write_bytes(onnx_graph.onnx_model(model, variables, info).SerializeToString())
    ort_ips = rate(onnx_predictor.OnnxPredictor(path), imgs, args.batches)
  print(f"onnxruntime  {label}: {ort_ips:7.1f} images/s ({os.cpu_count()} cores)")
  print(f"ratio onnxruntime/JAX: {ort_ips / jax_ips:.2f}")


if __name__ == "__main__":
  main()
