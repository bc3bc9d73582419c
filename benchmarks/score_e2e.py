"""End-to-end scoring speed: `python -m crfiqa_jax.score` as a user runs it, as whole
processes, side by side with a plain PyTorch script and with another checkout's `score`.

    python benchmarks/score_e2e.py --checkpoint=MODEL --input=FACES
        [--runs auto jax/fp32 onnxruntime/fp32 openvino/bf16] [--batch-size 32]
        [--torch-arch iresnet50] [--baseline-python OTHER/.venv/bin/python]
        [--detect] [--rounds 2]

Each run is one fresh process (interpreter start, imports, model load, compile or session
creation, decoding, forward, CSV writing) over every input of FACES (a folder or a list
file), reported as inputs/s: images/s on aligned faces, photos/s with --detect (MTCNN
detection and alignment included). `auto` is `score` with its defaults (what this host
gets); ENGINE/PRECISION runs pass --engine and --precision. Before the timed runs each
configuration scores the first 8 inputs once, so one-off work (the ONNX export, OpenVINO's
compiled-model cache) is done, as for every run of a user after their first.

Peers, timed the same way in the same rounds:
* --torch-arch: a plain PyTorch script (torch, PIL and numpy only) over the same aligned
  files — decode with PIL, normalise, the architecture of tests/torch_iresnet.py in eval
  mode and inference_mode, channels_last, batch --batch-size, one thread per core — in
  float32 and under bfloat16 autocast (its best on CPUs with AMX);
* --baseline-python: `score` of the checkout that python imports (e.g. the previous
  release), with its own defaults, run from a neutral folder so that it does not import
  this one.

The configurations run in turns, --rounds times, the fastest of each kept, so a machine
whose load moves still compares them fairly. CSVs go to a temporary folder; the largest
quality difference of each run to the first one is printed (relative to the largest
quality).
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

TORCH_SCRIPT = r"""
import sys, numpy as np, torch
from PIL import Image
sys.path.insert(0, {tests!r})
import torch_iresnet
torch.set_num_threads({threads})
spec = {faces!r}
if spec.endswith(".txt"):
  names = [ln.strip() for ln in open(spec) if ln.strip()]
else:
  import pathlib
  names = sorted(str(p) for p in pathlib.Path(spec).rglob("*.jpg"))
model = torch_iresnet.make({arch!r}).eval().to(memory_format=torch.channels_last)
out = []
with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled={bf16}):
  for s in range(0, len(names), {batch}):
    x = np.stack([np.asarray(Image.open(n).convert("RGB")) for n in names[s:s + {batch}]])
    x = torch.from_numpy((x.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
    out.append(model(x.contiguous(memory_format=torch.channels_last))[1].float().numpy())
print(len(np.concatenate(out)))
"""


def _time(cmd, cwd):
  t = time.perf_counter()
  r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  if r.returncode not in (0, 1):
    sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
  return time.perf_counter() - t


def _qualities(path):
  with open(path, newline="") as f:
    return np.array([float(r["quality"]) if r["quality"] else np.nan
                     for r in csv.DictReader(f)])


def _commands(args, tmp, inputs, names):
  """{run name: (command without --input/--output, or a full command for PyTorch)}."""
  score = ["-m", "crfiqa_jax.score", f"--checkpoint={Path(args.checkpoint).absolute()}",
           f"--batch-size={args.batch_size}"] + ["--detect"] * args.detect
  runs = {}
  for r in args.runs:
    engine, _, precision = r.partition("/")
    flags = [] if r == "auto" else [f"--engine={engine}", f"--precision={precision or 'auto'}"]
    runs[f"score {r}"] = [sys.executable] + score + flags
  if args.baseline_python:
    runs["baseline score (auto)"] = [args.baseline_python] + score
  if args.torch_arch and not args.detect:
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    for bf16 in (False, True):
      code = TORCH_SCRIPT.format(tests=tests, threads=len(os.sched_getaffinity(0)),
                                 faces=str(inputs), arch=args.torch_arch, batch=args.batch_size,
                                 bf16=bf16)
      runs[f"PyTorch {'bf16 autocast' if bf16 else 'fp32'} channels_last"] = \
          [sys.executable, "-c", code]
  return runs


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--input", required=True)
  p.add_argument("--detect", action="store_true")
  p.add_argument("--runs", nargs="+", default=["auto", "onnxruntime/fp32"])
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--torch-arch", default=None)
  p.add_argument("--baseline-python", default=None)
  p.add_argument("--rounds", type=int, default=1)
  args = p.parse_args()
  from crfiqa_jax.serve import score
  names = score.list_inputs(args.input)
  tmp = Path(tempfile.mkdtemp(prefix="score_e2e_"))
  inputs = tmp / "inputs.txt"
  inputs.write_text("\n".join(str(Path(n).absolute()) for n in names) + "\n")
  (tmp / "warm.txt").write_text("\n".join(str(Path(n).absolute()) for n in names[:8]) + "\n")
  runs = _commands(args, tmp, inputs, names)
  unit = "photos/s" if args.detect else "images/s"
  print(f"{len(names)} inputs, {len(os.sched_getaffinity(0))} cores, batch {args.batch_size}, "
        f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
  for k, cmd in runs.items():
    if not k.startswith("PyTorch"):
      s = _time(cmd + [f"--input={tmp / 'warm.txt'}", f"--output={tmp / 'warm.csv'}"], tmp)
      print(f"  warm-up (8 inputs) {k}: {s:.1f} s", flush=True)
  best = {k: np.inf for k in runs}
  for _ in range(args.rounds):
    for i, (k, cmd) in enumerate(runs.items()):
      io_flags = [] if k.startswith("PyTorch") else [f"--input={inputs}",
                                                      f"--output={tmp / f'{i}.csv'}"]
      best[k] = min(best[k], _time(cmd + io_flags, tmp))
  torch_best = max([len(names) / s for k, s in best.items() if k.startswith("PyTorch")],
                   default=None)
  base = best.get("baseline score (auto)")
  for k, s in best.items():
    rate = len(names) / s
    extra = f"  ({rate / torch_best:.2f}× the best PyTorch script)" if torch_best else ""
    extra += f"  ({base / s:.2f}× the baseline)" if base else ""
    print(f"  {k:36s}: {rate:7.2f} {unit} ({s:.0f} s){extra}", flush=True)
  q = {k: _qualities(tmp / f"{i}.csv") for i, k in enumerate(runs) if not k.startswith("PyTorch")}
  first = next(iter(q))
  for k in list(q)[1:]:
    ok = np.isfinite(q[k]) & np.isfinite(q[first])
    rel = np.abs(q[k] - q[first])[ok].max() / np.abs(q[first][ok]).max()
    print(f"  max relative quality difference {k} vs {first}: {rel:.2e} "
          f"({int((np.isfinite(q[k]) != np.isfinite(q[first])).sum())} rows differ in "
          "having a quality)")


if __name__ == "__main__":
  main()
