"""Scoring throughput from JPEG files through the streaming inference layer vs the bare
jitted forward on the same, already decoded batches: how much of the decoding is hidden
behind compute (hidden when the ratio is near 1).

    python benchmarks/inference.py [--arch iresnet50] [--batch 32] [--images 256]

Both use crfiqa_jax.serve.inference.FlaxPredictor on every local device; the first batch of each
is a warm-up (compilation) and is not timed.
"""

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from crfiqa_jax import models
from crfiqa_jax.data import sources
from crfiqa_jax.serve import inference


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="iresnet50")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--images", type=int, default=256)
  p.add_argument("--workers", type=int, default=4)
  args = p.parse_args()
  model = models.create_model(args.arch)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
  pred = inference.FlaxPredictor(model, variables, image_size=112)
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    base = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    for i in range(args.images + args.batch):
      path = Path(tmp) / f"{i:06d}.jpg"
      Image.fromarray(np.roll(base, i, axis=0)).save(path, quality=90)
      paths.append(str(path))
    src = sources.files_source(paths, image_size=112)
    batches = [np.stack([src.load(i) for i in range(s, s + args.batch)])
               for s in range(0, len(paths), args.batch)]
    jax.block_until_ready(pred(batches[0]))  # compile
    t0 = time.perf_counter()
    for b in batches[1:]:
      out = pred(b)
    jax.block_until_ready(out)
    bare = args.images / (time.perf_counter() - t0)

    it = inference.stream(pred, src, batch_size=args.batch, progress=False,
                          workers=args.workers)
    next(it)  # warm-up batch, not timed
    t0 = time.perf_counter()
    n = sum(len(b.indices) for b in it)
    streamed = n / (time.perf_counter() - t0)
  print(f"{args.arch}, batch {args.batch}, {args.images} JPEG files of 112x112, "
        f"{jax.local_device_count()} {jax.devices()[0].platform} device(s):")
  print(f"  bare jitted forward on decoded batches: {bare:8.1f} images/s")
  print(f"  streamed from JPEG files (decode in {args.workers} threads): {streamed:8.1f} "
        f"images/s")
  print(f"  ratio {streamed / bare:.3f} (1.0 = decoding fully hidden)")


if __name__ == "__main__":
  main()
