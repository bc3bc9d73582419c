"""End-to-end scoring speed: `python -m crfiqa_jax.score` as a user runs it, per engine.

    python benchmarks/score_e2e.py --checkpoint=MODEL --input=FACES [--detect]
        [--engines jax onnxruntime] [--batch-size 32] [--torch-arch iresnet50]

Each engine is timed as one fresh process (`score --engine=E`; interpreter start, model
load, compile or session creation, decoding, forward, CSV writing all included) and
reported as inputs/s: images/s on aligned faces, photos/s with --detect (MTCNN detection
and alignment included). Before the timed runs every engine scores the first 8 inputs
once, so the onnxruntime engine's one-off export is in its cache (the first-ever run
pays it once: its time is printed too). With --torch-arch, a plain PyTorch loop over the
same aligned files (decode with PIL, normalise, the same architecture in eval mode,
batch --batch-size, random weights) is timed the same way, as the released code would
score them. The CSVs are written to a temporary folder and compared across engines
(max relative quality difference).
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TORCH_LOOP = r"""
import sys, numpy as np, torch
from PIL import Image
sys.path.insert(0, {tests!r})
import torch_iresnet
from crfiqa_jax import models
from crfiqa_jax.serve import score
torch.set_num_threads({threads})
names = score.list_inputs({faces!r})
model = torch_iresnet.make({arch!r}).eval()
out = []
with torch.inference_mode():
  for s in range(0, len(names), {batch}):
    x = np.stack([np.asarray(Image.open(n).convert("RGB")) for n in names[s:s + {batch}]])
    x = torch.from_numpy(np.ascontiguousarray(models.normalize(x).transpose(0, 3, 1, 2)))
    out.append(model(x)[1].numpy())
print(len(np.concatenate(out)))
"""


def _run(cmd, env):
  t = time.perf_counter()
  r = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if r.returncode not in (0, 1):
    sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
  return time.perf_counter() - t


def _qualities(path):
  with open(path, newline="") as f:
    return np.array([float(r["quality"]) if r["quality"] else np.nan
                     for r in csv.DictReader(f)])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--input", required=True)
  p.add_argument("--detect", action="store_true")
  p.add_argument("--engines", nargs="+", default=["jax", "onnxruntime"])
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--torch-arch", default=None)
  args = p.parse_args()
  from crfiqa_jax.serve import engines
  from crfiqa_jax.serve import score
  n = len(score.list_inputs(args.input))
  tmp = Path(tempfile.mkdtemp(prefix="score_e2e_"))
  (tmp / "warm.txt").write_text("\n".join(score.list_inputs(args.input)[:8]))
  env = dict(os.environ)
  base = [sys.executable, "-m", "crfiqa_jax.score", f"--checkpoint={args.checkpoint}",
          f"--batch-size={args.batch_size}"] + ["--detect"] * args.detect
  unit = "photos/s" if args.detect else "images/s"
  print(f"{n} inputs, {engines.cpu_threads()} cores, batch {args.batch_size}", flush=True)
  for e in args.engines:
    s = _run(base + [f"--engine={e}", f"--input={tmp / 'warm.txt'}",
                     f"--output={tmp / 'warm.csv'}"], env)
    print(f"  warm-up (8 inputs, first-ever run exports the ONNX once) {e}: {s:.1f} s",
          flush=True)
  q, rates = {}, {}
  for e in args.engines:
    s = _run(base + [f"--engine={e}", f"--input={args.input}", f"--output={tmp / e}.csv"], env)
    rates[e] = n / s
    q[e] = _qualities(tmp / f"{e}.csv")
  if args.torch_arch and not args.detect:
    code = TORCH_LOOP.format(tests=str(Path(__file__).resolve().parent.parent / "tests"),
                             threads=engines.cpu_threads(), faces=args.input,
                             arch=args.torch_arch, batch=args.batch_size)
    rates["PyTorch loop"] = n / _run([sys.executable, "-c", code], env)
  ref = rates.get("PyTorch loop")
  for e, r in rates.items():
    extra = f"  ({r / ref:.2f}× the PyTorch loop)" if ref else ""
    print(f"  {e:14s}: {r:7.2f} {unit} ({n / r:.0f} s){extra}", flush=True)
  if len(q) > 1:
    first = next(iter(q))
    for e in list(q)[1:]:
      ok = np.isfinite(q[e]) & np.isfinite(q[first])
      rel = np.abs(q[e] - q[first])[ok].max() / np.abs(q[first][ok]).max()
      print(f"  max relative quality difference {e} vs {first}: {rel:.2e}")


if __name__ == "__main__":
  main()
