"""Scoring speed: images/s of the model forward (iResNet50 at 112×112 by default) on this
machine for every engine and precision, side by side in one process, against PyTorch:

* every (engine, precision) this host offers (crfiqa_jax.serve.engines.offered), built by
  `engines.make_predictor` and run through `scorer.Scorer` from uint8 images, as `score`
  runs them;
* "score uses" — what `score` picks on this host (`--engine=auto --precision=auto`);
* with --int8, OpenVINO on an int8 quantisation of the ONNX file (NNCF, calibrated on
  random images: speed only; benchmarks/int8.py measures its ranking);
* PyTorch — the same architecture (tests/torch_iresnet.py), eval mode, inference_mode, the
  same thread count, from a normalised tensor: float32 NCHW (the released code's layout),
  float32 channels_last, bfloat16 autocast channels_last, and torch.compile of the
  channels_last model under bfloat16 autocast (--torch-variants picks).

    python benchmarks/score.py [--arch iresnet50] [--image-size 112] [--batch 32]
                               [--batches 3] [--rounds 3] [--int8]
                               [--torch-variants fp32 fp32_cl bf16_cl compile_bf16_cl]

The rows are timed in turns (--rounds times each, the best round kept, each round after one
untimed batch) so that a machine whose load changes during the run still compares them
fairly. Ratios are against the
fastest PyTorch variant. Weights are random with non-trivial BatchNorm statistics (speed
does not depend on them).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TORCH_VARIANTS = {"fp32": "PyTorch fp32 NCHW", "fp32_cl": "PyTorch fp32 channels_last",
                  "bf16_cl": "PyTorch bf16 autocast channels_last",
                  "compile_bf16_cl": "PyTorch torch.compile bf16 channels_last"}


def _rate(fn, n_images: int, batches: int) -> float:
  """images/s over `batches` calls of fn, after one untimed call: the row before may have
  left the matrix units idle (AMX powers down when unused, and its first work is slower),
  so every row is timed warm."""
  fn()
  t = time.perf_counter()
  for _ in range(batches):
    fn()
  return n_images * batches / (time.perf_counter() - t)


def _int8(model, variables, info, cache, size):
  """OpenVINO on the model quantised to int8 (calibrated on random images: speed only)."""
  import int8

  from crfiqa_jax.serve import engines
  from crfiqa_jax.serve.openvino_predictor import OpenVinoPredictor
  fp32 = engines.onnx_file(model, variables, info, source=cache)
  calib = np.random.default_rng(1).integers(0, 256, (64, size, size, 3), dtype=np.uint8)
  xml = int8.quantize_openvino(fp32, calib, cache / "int8")
  return OpenVinoPredictor(xml, "int8", threads=engines.cpu_threads())


def _torch_runs(arch, variants, batch, size, imgs):
  """{row name: callable} of the PyTorch variants, each warmed up (compiled) once."""
  import torch

  import torch_iresnet
  from crfiqa_jax import models
  from crfiqa_jax.serve import engines
  torch.set_num_threads(engines.cpu_threads())
  x = torch.from_numpy(np.ascontiguousarray(models.normalize(imgs).transpose(0, 3, 1, 2)))
  x_cl = x.contiguous(memory_format=torch.channels_last)
  nchw = torch_iresnet.make(arch, image_size=size).eval()
  torch_iresnet.randomize_(nchw)
  cl = torch_iresnet.make(arch, image_size=size).eval().to(memory_format=torch.channels_last)
  cl.load_state_dict(nchw.state_dict())

  def run(m, x, bf16):
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
      return m(x)
  runs = {}
  for v in variants:
    if v == "fp32":
      runs[TORCH_VARIANTS[v]] = lambda: run(nchw, x, False)
    elif v == "fp32_cl":
      runs[TORCH_VARIANTS[v]] = lambda: run(cl, x_cl, False)
    elif v == "bf16_cl":
      runs[TORCH_VARIANTS[v]] = lambda: run(cl, x_cl, True)
    elif v == "compile_bf16_cl":
      compiled = torch.compile(cl)
      runs[TORCH_VARIANTS[v]] = lambda c=compiled: run(c, x_cl, True)
  for fn in runs.values():
    fn()
    fn()
  return runs


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="iresnet50")
  p.add_argument("--image-size", type=int, default=112)
  p.add_argument("--batch", type=int, nargs="+", default=[32])
  p.add_argument("--batches", type=int, default=3)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--int8", action="store_true", help="also OpenVINO int8 (NNCF; int8.py)")
  p.add_argument("--torch-variants", nargs="*", default=list(TORCH_VARIANTS),
                 choices=list(TORCH_VARIANTS))
  args = p.parse_args()
  import jax

  from crfiqa_jax import models
  from crfiqa_jax.serve import engines, scorer
  from helpers import random_variables
  size = args.image_size
  model = models.create_model(args.arch)
  variables = random_variables(model, size, 0)
  info = {"arch": args.arch, "embedding_dim": model.embedding_dim, "image_size": size}
  cache = Path(tempfile.mkdtemp(prefix="bench_score_"))
  builders = {f"{e} {pr}": (lambda e=e, pr=pr: engines.make_predictor(
      model, variables, info, engine=e, precision=pr, source=cache))
      for e, pr in engines.offered(model)}
  if args.int8 and engines.have_openvino():
    builders["openvino int8 (not kept)"] = lambda: _int8(model, variables, info, cache, size)
  chosen = " ".join(engines.choose("auto", "auto", model))
  builders[f"score uses ({chosen})"] = lambda: engines.make_predictor(
      model, variables, info, source=cache)
  predictors = {k: b() for k, b in builders.items()}
  print(f"{os.cpu_count()} CPUs, JAX backend {jax.default_backend()}, "
        f"{engines.cpu_threads()} threads, bf16 units: {engines.bf16_cpu()}", flush=True)
  for batch in args.batch:
    imgs = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    runs = {}
    for k, pred in predictors.items():
      s = scorer.Scorer(pred, batch_size=batch)
      s(imgs)  # compile / warm up
      runs[k] = lambda s=s: s(imgs)
    try:
      runs.update(_torch_runs(args.arch, args.torch_variants, batch, size, imgs))
    except ImportError:
      print("PyTorch not installed: no comparison")
    rates = {k: 0.0 for k in runs}
    for _ in range(args.rounds):
      for k, fn in runs.items():
        rates[k] = max(rates[k], _rate(fn, batch, args.batches))
    best = max([r for k, r in rates.items() if k.startswith("PyTorch")], default=None)
    for k, r in rates.items():
      extra = f"  ({r / best:.2f}× best PyTorch)" if best else ""
      print(f"{args.arch} {size}px batch {batch:4d}  {k:42s}: {r:7.1f} images/s{extra}",
            flush=True)


if __name__ == "__main__":
  main()
