"""Convolution gradients on this CPU: XLA's own vs crfiqa_jax.conv's matmul weight gradient.

    python benchmarks/conv.py [--batch 64] [--repeats 10]

For the 3×3 convolutions of the tiny demo net and of iResNet, times one jitted
forward + backward (∂x and ∂kernel of a non-linear loss) with `lax.conv_general_dilated`,
with `conv.conv_general_dilated` (matmul weight gradient) and with
`conv.conv_general_dilated_auto` (what models.IResNet(conv_grad="auto") uses on CPU), and
checks that the gradients agree. The per-layer table is how "auto" decides.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crfiqa_jax import conv

NHWC = ("NHWC", "HWIO", "NHWC")
LAYERS = [  # (spatial size, Cin, Cout, stride)
    (64, 3, 8, 1), (64, 8, 8, 1), (64, 8, 8, 2), (32, 16, 16, 1), (32, 16, 16, 2),
    (16, 32, 32, 1), (8, 64, 64, 1), (56, 64, 64, 1), (56, 64, 64, 2), (14, 256, 256, 1),
]


def _timed(fn, *args, repeats):
  out = fn(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / repeats * 1e3, out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=10)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  print(f"{'H':>4} {'Cin':>4} {'Cout':>4} {'s':>2} | {'xla ms':>8} {'matmul ms':>10} "
        f"{'auto ms':>8} | max rel. diff")
  for h, cin, cout, s in LAYERS:
    x = jnp.asarray(rng.normal(size=(args.batch, h, h, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    row, ref = [], None
    for fn in (lax.conv_general_dilated, conv.conv_general_dilated,
               conv.conv_general_dilated_auto):
      def loss(x, k, fn=fn):
        y = fn(x, k, (s, s), ((1, 1), (1, 1)), dimension_numbers=NHWC)
        return jnp.sum(jnp.sin(y))
      ms, g = _timed(jax.jit(jax.grad(loss, argnums=(0, 1))), x, k, repeats=args.repeats)
      row.append(ms)
      ref = g if ref is None else ref
      diff = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(g, ref))
    print(f"{h:>4} {cin:>4} {cout:>4} {s:>2} | {row[0]:8.1f} {row[1]:10.1f} {row[2]:8.1f} | "
          f"{diff:.1e}", flush=True)


if __name__ == "__main__":
  main()
