"""Will it fit, and how many chips? Compiles the real train step for a TPU topology here.

  python -m crfiqa_jax.plan --config=large --topology=v5e:4x4 [--num_classes=N] \
      [--num_examples=N] [--hours=H] [--json] [--config.key=value ...]

Needs the `libtpu` package (extra `[tpu]`), not a TPU: libtpu describes the topology
(`jax.experimental.topologies`) and XLA:TPU compiles the same Trainer step (shardings,
donation) for a mesh of its devices from abstract inputs only. From the compiled program:

  per-device bytes = arguments + temporaries + outputs − aliases (memory_analysis)
  FLOPs per step   = per-device FLOPs (cost_analysis) × devices
  step at peak     = FLOPs per step / (devices × peak FLOP/s per device)
  MFU needed       = (total steps × step at peak) / (--hours)
  chip-hours       = total steps × FLOPs per step / peak FLOP/s per chip / 3600 at 100% MFU

Peaks are the public dense bf16 figures per chip, used for fp32 configs too: XLA:TPU runs
fp32 matmuls and convolutions as bf16 passes by default, so the ideal is the same.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from crfiqa_jax import cli, sharding
from crfiqa_jax.train import config as config_cli
from crfiqa_jax.train.trainer import Trainer

GiB = 1 << 30

# device_kind → (HBM per chip, peak dense bf16 FLOP/s per chip, libtpu accelerator-type
# name for N chips, chip generation). Public specs of Google Cloud TPU.
CHIPS = {
    "TPU v4": (32 * GiB, 275e12, "v4-{cores}", "v4"),
    "TPU v5 lite": (16 * GiB, 197e12, "v5litepod-{chips}", "v5e"),
    "TPU v5": (95 * GiB, 459e12, "v5p-{cores}", "v5p"),
    "TPU v6 lite": (32 * GiB, 918e12, "v6e-{chips}", "v6e"),
}
_GEN_PREFIX = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5litepod": "TPU v5 lite",
               "v5p": "TPU v5", "v6e": "TPU v6 lite"}


def _quiet_libtpu(topology: str):
  """libtpu looks for this host's accelerator type and worker hostnames (cloud metadata)
  and warns when absent; the topology we compile for comes from --topology instead."""
  gen, _, dims = topology.partition(":")
  chips = math.prod(int(d) for d in dims.split("x")) if dims else 1
  kind = _GEN_PREFIX.get(gen.lower())
  if kind:
    os.environ.setdefault("TPU_ACCELERATOR_TYPE",
                          CHIPS[kind][2].format(chips=chips, cores=2 * chips))
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # No chip is opened; don't contend for libtpu's one-process-per-host lock file.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: str):
  """The devices of a TPU topology such as "v5e:4x4" (needs libtpu)."""
  cli.optional_import("libtpu", "tpu", "plan (compiling for TPU)")
  _quiet_libtpu(topology)
  try:
    return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
  except Exception as e:  # libtpu raises XlaRuntimeError with a long message
    raise ValueError(f"libtpu cannot describe topology {topology!r} (examples: v5e:4x4, "
                     f"v4:2x2x2, v5p:2x2x4, v6e:8x8): {str(e).splitlines()[0]}") from e


def plan(config, devices, *, num_classes: int, num_examples: int, hours: float = 24.0) -> dict:
  """Compiles the train step of `config` for a 1-D mesh over `devices`; returns the report
  (sizes in bytes, FLOPs per global step, times in seconds/hours)."""
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f"No HBM/peak figures for device kind {kind!r}; known: {sorted(CHIPS)}")
  hbm_chip, peak_chip, _, gen = CHIPS[kind]
  chips = len({(tuple(d.coords), getattr(d, "slice_index", 0)) for d in devices})
  per_chip = len(devices) // chips  # v4 exposes each of its two TensorCores as a device
  mesh = sharding.make_mesh(devices)
  trainer = Trainer(config, num_classes=num_classes, num_examples=num_examples,
                          mesh=mesh)
  batch_sh = sharding.batch_sharding(mesh)
  size = config.image_size
  batch = {"image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8,
                                         sharding=batch_sh),
           "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sh)}
  hbm = hbm_chip // per_chip
  facts = {
      "topology_kind": kind, "generation": gen, "devices": len(devices), "chips": chips,
      "processes": len({d.process_index for d in devices}),
      "model": config.model, "dtype": config.dtype, "batch_size": config.batch_size,
      "num_classes": num_classes, "num_classes_padded": trainer.num_classes_padded,
      "shard_centres": bool(config.shard_centres), "hbm_bytes": hbm,
      "total_steps": trainer.total_steps, "hours": hours,
  }
  t0 = time.perf_counter()
  try:
    compiled = trainer.step_fn.lower(trainer.abstract_target(), batch).compile()
  except Exception as e:  # XLA:TPU refuses programs that exceed HBM at compile time
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return {**facts, "fits": False, "per_device_bytes": _oom_bytes(str(e)),
            "flops_per_step": None, "error": str(e).strip().splitlines()[0][:300],
            "compile_s": time.perf_counter() - t0}
  compile_s = time.perf_counter() - t0

  mem = compiled.memory_analysis()
  breakdown = {k: int(getattr(mem, f"{k}_size_in_bytes"))
               for k in ("argument", "output", "alias", "temp", "generated_code")}
  per_device = (breakdown["argument"] + breakdown["temp"] + breakdown["output"]
                - breakdown["alias"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_step = float(cost["flops"]) * len(devices)  # cost_analysis counts one device
  peak_device = peak_chip / per_chip
  step_at_peak = flops_per_step / (peak_device * len(devices))
  hours_at_peak = trainer.total_steps * step_at_peak / 3600
  return {
      **facts, "per_device_bytes": per_device, "memory": breakdown,
      "fits": per_device <= hbm, "flops_per_step": flops_per_step,
      "peak_flops_per_chip": peak_chip, "step_time_at_peak_s": step_at_peak,
      "hours_at_peak": hours_at_peak,
      "chip_hours_at_peak": trainer.total_steps * flops_per_step / peak_chip / 3600,
      "mfu_needed": hours_at_peak / hours if hours > 0 else None,
      "compile_s": compile_s,
  }


def _oom_bytes(message: str):
  """A lower bound of the bytes a device needs, from XLA:TPU's out-of-memory message ("the
  total memory required for HLO temporaries (37.26G) exceeds available HBM (15.75G)"), or
  None when the message has no such figure."""
  m = re.search(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM", message)
  if not m:
    return None
  return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def format_report(r: dict, topology: str) -> str:
  gb = lambda b: f"{b / GiB:.2f} GiB" if b is not None else "?"  # noqa: E731
  head = [
      f"{topology}: {r['chips']} chips ({r['topology_kind']}), {r['devices']} devices, "
      f"{r['processes']} processes",
      f"{r['model']} {r['dtype']}, batch {r['batch_size']}, {r['num_classes']:,} classes "
      f"({'centres sharded' if r['shard_centres'] else 'centres replicated'})",
  ]
  if "error" in r:
    return "\n".join(head + [f"DOES NOT FIT: XLA needs > {gb(r['per_device_bytes'])} per device, "
                             f"HBM {gb(r['hbm_bytes'])} ({r['error']})"])
  m = r["memory"]
  lines = head + [
      f"per device: {gb(r['per_device_bytes'])} = arguments {gb(m['argument'])} + temporaries "
      f"{gb(m['temp'])} + outputs {gb(m['output'])} - aliases {gb(m['alias'])}; HBM "
      f"{gb(r['hbm_bytes'])} → {'fits' if r['fits'] else 'DOES NOT FIT'}",
      f"FLOPs per global step {r['flops_per_step']:.4g}; at peak "
      f"({r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s per chip) "
      f"{r['step_time_at_peak_s'] * 1e3:.1f} ms/step",
      f"paper schedule {r['total_steps']:,} steps: {r['hours_at_peak']:.2f} h at 100% MFU on "
      f"this topology ({r['chip_hours_at_peak']:.0f} chip-hours)",
  ]
  if r["mfu_needed"] is not None:
    lines.append(f"to finish in {r['hours']:g} h: MFU ≥ {100 * r['mfu_needed']:.1f}%"
                 + ("  (impossible: > 100%)" if r["mfu_needed"] > 1 else ""))
  lines.append(f"(compiled in {r['compile_s']:.0f} s)")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Exit code per crfiqa_jax.cli: 0 printed the plan, 2 a usage or config error."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    rest, overrides = config_cli.split_argv(argv)
  except config_cli.ConfigError as e:
    return cli.report(e)
  p = cli.parser("crfiqa_jax.plan", __doc__,
                 "python -m crfiqa_jax.plan --config=large --topology=v5e:4x4")
  p.add_argument("--config", required=True, help="config name or path (as for main)")
  p.add_argument("--topology", required=True, help="TPU topology, e.g. v5e:4x4, v5p:2x2x4")
  p.add_argument("--num_classes", type=int, default=0,
                 help="identities (default: the config's paper_num_classes)")
  p.add_argument("--num_examples", type=int, default=0,
                 help="training images (default: the config's paper_num_examples)")
  p.add_argument("--hours", type=float, default=24.0, help="wall-clock target for the MFU")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  args = p.parse_args(rest)

  def body():
    config = config_cli.load_config(args.config, overrides)
    num_classes = args.num_classes or config.get("paper_num_classes", 0)
    num_examples = args.num_examples or config.get("paper_num_examples", 0)
    if num_classes <= 0 or num_examples <= 0:
      raise ValueError(f"config {args.config!r} names no dataset size; pass --num_classes and "
                       "--num_examples")
    devices = topology_devices(args.topology)
    report = plan(config, devices, num_classes=num_classes, num_examples=num_examples,
                  hours=args.hours)
    report["topology"] = args.topology
    print(json.dumps(report) if args.json else format_report(report, args.topology))

  return cli.run(body)
