"""Scoring speed: images/s of quality inference (iResNet50 at 112×112 by default) on this
machine for every engine, side by side in one process:

* JAX — `inference.FlaxPredictor` through `scorer.Scorer` (uint8 in, normalised on device);
* onnxruntime — the model's cached ONNX export (crfiqa_jax.serve.engines), tuned session;
* onnxruntime int8 — with --int8, a static int8 quantisation of that file
  (benchmarks/int8.py; not an engine of crfiqa_jax: it does not keep the ranking);
* PyTorch — the same architecture (tests/torch_iresnet.py), eval mode, inference_mode,
  same thread count, NCHW (the layout of the released code) and channels_last;
* "score uses" — what `score --engine=auto` picks on this host, built the way score does.

    python benchmarks/score.py [--arch iresnet50] [--batch 32] [--batches 3] [--rounds 3]
                               [--int8]

The engines are timed in turns (--rounds times each, the best round kept) so that a
machine whose load changes during the run still compares them fairly. Ratios are against
PyTorch NCHW. Weights are random (speed does not depend on them).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _rate(fn, n_images: int, batches: int) -> float:
  t = time.perf_counter()
  for _ in range(batches):
    fn()
  return n_images * batches / (time.perf_counter() - t)


def _int8(model, variables, info, cache):
  """The model quantised to int8 (calibrated on random images: speed only)."""
  import int8

  from crfiqa_jax.serve import engines
  from crfiqa_jax.serve.onnx_predictor import OnnxPredictor
  fp32 = engines.onnx_file(model, variables, info, source=cache)
  calib = np.random.default_rng(1).uniform(-1, 1, (32, 3, 112, 112)).astype(np.float32)
  path = cache / "int8.onnx"
  path.write_bytes(int8.quantize(fp32, calib))
  return OnnxPredictor(path, options=engines.session_options())


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="iresnet50")
  p.add_argument("--batch", type=int, nargs="+", default=[32])
  p.add_argument("--batches", type=int, default=3)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--int8", action="store_true", help="also an int8 quantisation (int8.py)")
  args = p.parse_args()
  import jax
  import jax.numpy as jnp

  from crfiqa_jax import models
  from crfiqa_jax.serve import engines
  from crfiqa_jax.serve import inference
  from crfiqa_jax.serve import scorer
  model = models.create_model(args.arch)
  variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))()
  variables = inference.host_local(variables)
  info = {"arch": args.arch, "embedding_dim": model.embedding_dim, "image_size": 112}
  cache = Path(tempfile.mkdtemp(prefix="bench_score_"))
  chosen = engines.choose("auto", model)
  builders = {"JAX": lambda: engines.make_predictor(model, variables, info, engine="jax")}
  if engines.have_onnxruntime():
    builders["onnxruntime"] = lambda: engines.make_predictor(
        model, variables, info, engine="onnxruntime", source=cache)
    if args.int8:
      builders["onnxruntime int8 (not kept)"] = lambda: _int8(model, variables, info, cache)
  else:
    print("onnxruntime not installed: JAX only")
  builders[f"score uses ({chosen})"] = lambda: engines.make_predictor(
      model, variables, info, engine="auto", source=cache)
  predictors = {k: b() for k, b in builders.items()}
  try:
    import torch

    import torch_iresnet
    torch.set_num_threads(engines.cpu_threads())
    ref = torch_iresnet.make(args.arch).eval()
    ref_cl = torch_iresnet.make(args.arch).eval().to(memory_format=torch.channels_last)
  except ImportError:
    torch = None
    print("PyTorch not installed: no comparison")
  print(f"{os.cpu_count()} CPUs, JAX backend {jax.default_backend()}, "
        f"{engines.cpu_threads()} onnxruntime/PyTorch threads", flush=True)
  for batch in args.batch:
    imgs = np.random.default_rng(0).integers(0, 255, (batch, 112, 112, 3), dtype=np.uint8)
    runs = {}
    for k, pred in predictors.items():
      s = scorer.Scorer(pred, batch_size=batch)
      s(imgs)  # compile / warm up
      runs[k] = lambda s=s: s(imgs)
    if torch is not None:
      x = torch.from_numpy(np.ascontiguousarray(models.normalize(imgs).transpose(0, 3, 1, 2)))
      x_cl = x.contiguous(memory_format=torch.channels_last)

      def torch_run(m, x):
        with torch.inference_mode():
          m(x)
      runs["PyTorch NCHW"] = lambda: torch_run(ref, x)
      runs["PyTorch channels_last"] = lambda: torch_run(ref_cl, x_cl)
      for fn in ("PyTorch NCHW", "PyTorch channels_last"):
        runs[fn]()
    rates = {k: 0.0 for k in runs}
    for _ in range(args.rounds):
      for k, fn in runs.items():
        rates[k] = max(rates[k], _rate(fn, batch, args.batches))
    base = rates.get("PyTorch NCHW")
    for k, r in rates.items():
      extra = f"  ({r / base:.2f}× PyTorch NCHW)" if base else ""
      print(f"{args.arch} batch {batch:4d}  {k:28s}: {r:7.1f} images/s{extra}", flush=True)


if __name__ == "__main__":
  main()
