"""Scoring speed: images/s of quality inference with iResNet50 at 112×112 on this machine,
JAX (the jitted eval-mode forward `score.Scorer` uses) vs the same architecture in PyTorch
(tests/torch_iresnet.py, eval mode, torch.inference_mode, same thread count).

    python benchmarks/score.py [--arch iresnet50] [--batch 32] [--batches 5]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="iresnet50")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--batches", type=int, default=5)
  args = p.parse_args()
  import jax
  import jax.numpy as jnp

  from crfiqa_jax import models, score
  model = models.create_model(args.arch)
  variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))()
  scorer = score.Scorer(model, variables, batch_size=args.batch)
  imgs = np.random.default_rng(0).integers(0, 255, (args.batch, 112, 112, 3), dtype=np.uint8)
  scorer(imgs)  # compile
  t = time.perf_counter()
  for _ in range(args.batches):
    scorer(imgs)
  jax_ips = args.batch * args.batches / (time.perf_counter() - t)
  print(f"JAX     {args.arch} batch {args.batch}: {jax_ips:7.1f} images/s")
  try:
    import torch
  except ImportError:
    print("PyTorch not installed: no comparison")
    return
  import torch_iresnet
  torch.set_num_threads(os.cpu_count())
  ref = torch_iresnet.make(args.arch).eval()
  x = torch.from_numpy((imgs.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5)
  with torch.inference_mode():
    ref(x)
    t = time.perf_counter()
    for _ in range(args.batches):
      ref(x)
  torch_ips = args.batch * args.batches / (time.perf_counter() - t)
  print(f"PyTorch {args.arch} batch {args.batch}: {torch_ips:7.1f} images/s "
        f"({os.cpu_count()} threads)")
  print(f"ratio JAX/PyTorch: {jax_ips / torch_ips:.2f}")


if __name__ == "__main__":
  main()
