"""3×3 convolutions on this CPU: gradients (XLA's own vs crfiqa_jax.models.conv's matmul weight
gradient) and, with --forward, the forward (XLA's vs two matmul lowerings vs PyTorch).

    python benchmarks/conv.py [--batch 64] [--repeats 10]
    python benchmarks/conv.py --forward [--batch 16]

For the 3×3 convolutions of the tiny demo net and of iResNet, times one jitted
forward + backward (∂x and ∂kernel of a non-linear loss) with `lax.conv_general_dilated`,
with `conv.conv_general_dilated` (matmul weight gradient) and with
`conv.conv_general_dilated_auto` (what models.IResNet(conv_grad="auto") uses on CPU), and
checks that the gradients agree. The per-layer table is how "auto" decides.

--forward: scoring and the training forward are bound by the 3×3 convolutions; this times
one jitted forward per iResNet layer shape (FORWARD_LAYERS) for
  * xla: `lax.conv_general_dilated`, NHWC (what the model runs);
  * patches: the nine shifted input views concatenated along channels (im2col) and one
    [B·H·W, 9·Cin] × [9·Cin, Cout] matrix product;
  * shifted: nine [B·H·W, Cin] × [Cin, Cout] products of the shifted views, summed;
  * torch: `torch.nn.functional.conv2d` (NCHW, two threads), when torch is installed;
checks that the lowerings agree with XLA's convolution, and prints ms and GFLOP/s. To try
XLA's experimental library routes, set e.g.
XLA_FLAGS=--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crfiqa_jax.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")
LAYERS = [  # (spatial size, Cin, Cout, stride)
    (64, 3, 8, 1), (64, 8, 8, 1), (64, 8, 8, 2), (32, 16, 16, 1), (32, 16, 16, 2),
    (16, 32, 32, 1), (8, 64, 64, 1), (56, 64, 64, 1), (56, 64, 64, 2), (14, 256, 256, 1),
]

FORWARD_LAYERS = [  # (spatial size, Cin, Cout, stride) of iResNet's 3×3 convolutions
    (112, 3, 64, 1), (112, 64, 64, 1), (56, 64, 64, 1), (56, 64, 64, 2), (28, 128, 128, 1),
    (28, 128, 128, 2), (14, 256, 256, 1), (14, 256, 256, 2), (7, 512, 512, 1)]


def xla(x, k, s):
  return lax.conv_general_dilated(x, k, (s, s), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def _views(x, s):
  """The nine views x_pad[:, i + s·h, j + s·w, :] of a 3×3, padding-1 convolution."""
  b, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
  return [xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
          for i in range(3) for j in range(3)]


def patches(x, k, s):
  p = jnp.concatenate(_views(x, s), axis=-1)
  return jnp.einsum("bhwc,cd->bhwd", p, k.reshape(-1, k.shape[-1]))


def shifted(x, k, s):
  ks = k.reshape(9, k.shape[2], k.shape[3])
  return sum(jnp.einsum("bhwc,cd->bhwd", v, ks[t]) for t, v in enumerate(_views(x, s)))


def _timed(fn, *args, repeats):
  out = fn(*args)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / repeats * 1e3, out


def _torch_ms(x, k, s, repeats):
  try:
    import torch
  except ImportError:
    return float("nan")
  torch.set_num_threads(2)
  xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
  kt = torch.from_numpy(np.asarray(k)).permute(3, 2, 0, 1).contiguous()
  with torch.no_grad():
    torch.nn.functional.conv2d(xt, kt, stride=s, padding=1)
    t = time.perf_counter()
    for _ in range(repeats):
      torch.nn.functional.conv2d(xt, kt, stride=s, padding=1)
  return (time.perf_counter() - t) / repeats * 1e3


def forward(args):
  rng = np.random.default_rng(0)
  print(f"{'H':>4} {'Cin':>4} {'Cout':>4} {'s':>2} | ms: {'xla':>7} {'patches':>8} "
        f"{'shifted':>8} {'torch':>7} | GFLOP/s: xla patches shifted torch")
  for h, cin, cout, s in FORWARD_LAYERS:
    x = jnp.asarray(rng.normal(size=(args.batch, h, h, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.1, jnp.float32)
    ms, ref = [], None
    for fn in (xla, patches, shifted):
      t, out = _timed(jax.jit(fn, static_argnums=2), x, k, s, repeats=args.repeats)
      ms.append(t)
      if ref is None:
        ref = out
      rel = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
      assert rel < 1e-4, f"{fn.__name__} differs from XLA's convolution by {rel:.1e}"
    ms.append(_torch_ms(x, k, s, args.repeats))
    ho = (h - 1) // s + 1
    gflop = 2 * args.batch * ho * ho * 9 * cin * cout / 1e9
    print(f"{h:>4} {cin:>4} {cout:>4} {s:>2} | ms: " + " ".join(f"{v:8.1f}" for v in ms)
          + " | GFLOP/s: " + " ".join(f"{gflop / v * 1e3:.0f}" for v in ms), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=None, help="default 64, 16 with --forward")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--forward", action="store_true", help="forward only, vs matmul lowerings")
  args = p.parse_args()
  if args.forward:
    args.batch = args.batch or 16
    return forward(args)
  args.batch = args.batch or 64
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
