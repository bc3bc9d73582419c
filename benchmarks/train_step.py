"""images/s of one CR-FIQA train step (forward, loss, backward, SGD) on this machine.

    python benchmarks/train_step.py [--arch iresnet50] [--batch 8] [--steps 10]
        [--dtype float32 bfloat16] [--conv-grad auto matmul xla]
        [--torch-variants eager channels_last compile]

JAX: the jitted `step.train_step` (iResNet, ArcFace + CR loss, SGD + weight decay +
backbone clipping) on one device, once per --conv-grad choice (models.IResNet.conv_grad:
"auto" and each of its alternatives); the ratio of each to the fastest is printed, so
`auto` can be checked to be the fastest or within 3 %. PyTorch (when installed): the same
architecture (tests/torch_iresnet.py), the same loss and optimiser, the same thread
count, in each --torch-variants form: `eager` (NCHW, what the released code runs),
`channels_last` (NHWC memory format, model and input), `compile` (torch.compile of the
model, channels_last) — in bfloat16 each under bf16 autocast. Every --dtype is timed for
JAX and every PyTorch variant in one run, and a table of every row's ratio to every other
ends the output (e.g. JAX bfloat16 ÷ JAX float32 on a CPU with AMX). XLA_FLAGS is read from
the environment and printed.

MFU = FLOPs of the compiled step (XLA cost_analysis) / measured step time / the device's
peak. It is printed on the GPUs of PEAK_TFLOPS (or any device with --peak-tflops), e.g.

    python benchmarks/train_step.py --arch iresnet100 --batch 128 --dtype bfloat16 --skip-torch
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# device_kind substring → dense peak TFLOP/s (bf16, tf32) from NVIDIA's datasheets. XLA runs
# float32 convolutions and dots as TF32 on these GPUs by default, so float32 uses tf32.
PEAK_TFLOPS = {
    "H100 PCIe": (756, 378), "H100": (989, 495), "H200": (989, 495), "A100": (312, 156),
    "L4": (121, 60), "A10G": (70, 35),
}


def peak_flops(device_kind: str, dtype: str):
  """The device's peak FLOP/s for `dtype`, or None when not in PEAK_TFLOPS."""
  for key, (bf16, tf32) in PEAK_TFLOPS.items():  # "H100 PCIe" is tried before "H100"
    if key in device_kind:
      return 1e12 * (bf16 if dtype == "bfloat16" else tf32)
  return None


def step_flops(step_fn, *args) -> float:
  """FLOPs of one step from XLA's cost analysis of a CPU lowering of it: on a GPU the
  compiled module's convolutions are cuDNN custom calls that its own cost analysis does not
  count (docs/gpu.md: it reported 0.33 of the 36.1 GFLOP of an iResNet50 image's step)."""
  lowered = step_fn.trace(*args).lower(lowering_platforms=("cpu",))
  cost = lowered.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def bench_jax(arch, batch, steps, classes, dtype, conv_grad="auto"):
  import jax
  import numpy as np

  from crfiqa_jax import sharding
  from crfiqa_jax.train import config as config_lib
  from crfiqa_jax.train.trainer import Trainer
  cfg = config_lib.load_config("base", {"model": arch, "batch_size": str(batch), "dtype": dtype,
                                        "conv_grad": conv_grad})
  mesh = sharding.make_mesh(jax.devices()[:1])
  trainer = Trainer(cfg, num_classes=classes, num_examples=batch * 100, mesh=mesh)
  state = trainer.init()
  rng = np.random.default_rng(0)
  b = sharding.global_batch(
      {"image": rng.integers(0, 255, (batch, 112, 112, 3), dtype=np.uint8),
       "label": rng.integers(0, classes, batch).astype(np.int32)}, mesh)
  t = time.perf_counter()
  lowered = trainer.step_fn.lower(state, b)
  step = lowered.compile()
  state, m = step(state, b)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  flops = step_flops(trainer.step_fn, state, b)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, m = step(state, b)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return batch / np.median(times), compile_s, flops / np.median(times)


TORCH_VARIANTS = ("eager", "channels_last", "compile")


def bench_torch(arch, batch, steps, classes, threads, device="cpu", dtype="float32",
                variant="eager"):
  import contextlib

  import numpy as np
  import torch
  import torch.nn.functional as F

  import torch_iresnet
  torch.set_num_threads(threads)
  dev = torch.device(device)
  model = torch_iresnet.make(arch).train().to(dev)
  fmt = torch.contiguous_format if variant == "eager" else torch.channels_last
  model = model.to(memory_format=fmt)
  net = torch.compile(model) if variant == "compile" else model
  dim = model.features.num_features  # the embedding width (512; 64 for iresnet_tiny)
  centres = torch.nn.Parameter(torch.randn(dim, classes, device=dev) * 0.01)
  opt_b = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  opt_h = torch.optim.SGD([centres], lr=0.1, momentum=0.9, weight_decay=5e-4)
  x = torch.randn(batch, 3, 112, 112, device=dev).contiguous(memory_format=fmt)
  y = torch.randint(0, classes, (batch,), device=dev)
  # bf16: autocast runs convolutions and matmuls in bf16 (JAX's --dtype bfloat16 path).
  amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16"
         else contextlib.nullcontext())

  def step():
    with amp:
      emb, q = net(x)
    emb, q = emb.float(), q.float()
    cos = F.normalize(emb) @ F.normalize(centres, dim=0)
    cos = cos.clamp(-1, 1)
    with torch.no_grad():
      ccs = cos.gather(1, y[:, None])[:, 0]
      other = cos.clone()
      other.scatter_(1, y[:, None], -1e12)
      cr = ccs / (other.max(1).values + 1 + 1e-9)
    theta = torch.acos(cos.gather(1, y[:, None]).clamp(-1 + 1e-7, 1 - 1e-7))
    logits = cos.scatter(1, y[:, None], torch.cos(theta + 0.5)) * 64
    loss = F.cross_entropy(logits, y) + 10 * F.smooth_l1_loss(q, cr, beta=0.5)
    opt_b.zero_grad()
    opt_h.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
    opt_b.step()
    opt_h.step()

  def sync():
    if dev.type == "cuda":
      torch.cuda.synchronize()

  step()
  step()
  sync()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
  return batch / np.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="iresnet50")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--classes", type=int, default=10572)
  p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                 help="computation dtypes to time, each for JAX and every PyTorch variant")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--conv-grad", nargs="+", default=["auto", "matmul", "xla"],
                 choices=["auto", "matmul", "xla"],
                 help="convolution weight gradients to time (models.IResNet.conv_grad)")
  p.add_argument("--torch-variants", nargs="+", default=["eager", "channels_last"],
                 choices=TORCH_VARIANTS, help="PyTorch forms to time (see above)")
  p.add_argument("--peak-tflops", type=float, default=0.0,
                 help="device peak for the MFU (default: PEAK_TFLOPS by device kind)")
  args = p.parse_args()
  threads = os.cpu_count()
  import jax
  kind = jax.devices()[0].device_kind
  print(f"{args.arch} batch {args.batch} {' and '.join(args.dtype)} on {kind} "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", flush=True)
  rates = {}
  for dtype in args.dtype:
    rates.update(_jax_rows(args, dtype, kind))
  if not args.skip_torch:
    rates.update(_torch_rows(args, threads))
  if len(rates) > 1:
    print("side by side (rows ÷ columns):")
    names = list(rates)
    print(" " * 34 + "".join(f"{n[:16]:>17s}" for n in names))
    for a in names:
      print(f"{a:34s}" + "".join(f"{rates[a] / rates[b]:17.2f}" for b in names))


def _jax_rows(args, dtype, kind) -> dict:
  """{"JAX DTYPE conv_grad=CG": images/s} of every --conv-grad choice, printed as they go."""
  peak = args.peak_tflops * 1e12 or peak_flops(kind, dtype)
  out = {}
  for cg in dict.fromkeys(args.conv_grad):
    ips, compile_s, achieved = bench_jax(args.arch, args.batch, args.steps, args.classes,
                                         dtype, cg)
    out[f"JAX {dtype} conv_grad={cg}"] = ips
    mfu = (f", MFU {100 * achieved / peak:.1f}% of {peak / 1e12:g} TFLOP/s" if peak
           else " (peak unknown: --peak-tflops for the MFU)")
    print(f"JAX {dtype} conv_grad={cg:7s}: {ips:8.2f} images/s (compile {compile_s:.0f} s, "
          f"{achieved / 1e12:.3f} TFLOP/s{mfu})", flush=True)
  best = max(out.values())
  for name, ips in out.items():
    print(f"ratio {name} / fastest conv_grad: {ips / best:.3f}")
  return out


def _torch_rows(args, threads) -> dict:
  """{"PyTorch VARIANT DTYPE": images/s} of every variant in every dtype (bf16: autocast)."""
  try:
    import torch
  except ImportError:
    print("PyTorch not installed (pip install -e '.[torch]'): no comparison")
    return {}
  import jax
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  out = {}
  for dtype in args.dtype:
    for variant in dict.fromkeys(args.torch_variants):
      tips = bench_torch(args.arch, args.batch, args.steps, args.classes, threads, device,
                         dtype, variant)
      out[f"PyTorch {variant} {dtype}"] = tips
      print(f"PyTorch {variant:13s} {dtype}: {tips:8.2f} images/s ({device}, {threads} "
            f"threads{', autocast bf16' if dtype == 'bfloat16' else ''})", flush=True)
  return out


if __name__ == "__main__":
  main()
