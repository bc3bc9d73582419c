"""Scoring speed: images/s of quality inference with iResNet50 at 112×112 on this machine,
JAX (`inference.FlaxPredictor` through `score.Scorer`) vs the same architecture in PyTorch (tests/torch_iresnet.py,
eval mode, torch.inference_mode, same thread count), for each batch size given.

    python benchmarks/score.py [--arch iresnet50] [--batch 16 32 64] [--batches 5] [--rounds 2]

The variants are timed in turns (--rounds times each, the best round kept) so that a
machine whose load changes during the run still compares them fairly.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _best_rate(fn, n_images: int, batches: int) -> float:
  t = time.perf_counter()
  for _ in range(batches):
    fn()
  return n_images * batches / (time.perf_counter() - t)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="iresnet50")
  p.add_argument("--batch", type=int, nargs="+", default=[32])
  p.add_argument("--batches", type=int, default=5)
  p.add_argument("--rounds", type=int, default=2)
  args = p.parse_args()
  import jax
  import jax.numpy as jnp

  from crfiqa_jax import inference, models, score
  model = models.create_model(args.arch)
  variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))()
  try:
    import torch
    import torch_iresnet
    torch.set_num_threads(os.cpu_count())
    ref = torch_iresnet.make(args.arch).eval()
  except ImportError:
    torch = None
    print("PyTorch not installed: no comparison")
  for batch in args.batch:
    imgs = np.random.default_rng(0).integers(0, 255, (batch, 112, 112, 3), dtype=np.uint8)
    runs = {}
    scorer = score.Scorer(inference.FlaxPredictor(model, variables), batch_size=batch)
    scorer(imgs)  # compile
    runs["JAX             "] = lambda: scorer(imgs)
    if torch is not None:
      x = torch.from_numpy((imgs.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5)

      def torch_run():
        with torch.inference_mode():
          ref(x)
      torch_run()
      runs["PyTorch         "] = torch_run
    rates = {k: 0.0 for k in runs}
    for _ in range(args.rounds):
      for k, fn in runs.items():
        rates[k] = max(rates[k], _best_rate(fn, batch, args.batches))
    for k, r in rates.items():
      extra = ""
      if torch is not None and not k.startswith("PyTorch"):
        extra = f"  ({r / rates['PyTorch         ']:.2f}× PyTorch)"
      print(f"{args.arch} batch {batch:4d}  {k}: {r:7.1f} images/s{extra}", flush=True)


if __name__ == "__main__":
  main()
