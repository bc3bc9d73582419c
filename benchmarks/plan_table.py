"""The "will it fit" table of docs/tpu-planning.md: `crfiqa_jax.plan` over topologies × classes × centre
layout × dtype for one config, in one process (libtpu loads once; each row is one XLA:TPU
compile of the real train step, minutes for iResNet100 on a small CPU).

    python benchmarks/plan_table.py --config=large --out=benchmarks/results/plan_large.jsonl [--rows=ROWS]

ROWS: "TOPOLOGY/CLASSES/{rep,shard}/{fp32,bf16}" joined by commas (default: DEFAULT_ROWS).
Rows already in --out are not compiled again; the markdown table is printed at the end.
"""

import argparse
import json
import sys
from pathlib import Path

DEFAULT_ROWS = (
    "v5e:4x4/85742/rep/bf16,v5e:4x4/85742/rep/fp32,v5e:4x4/1000000/shard/bf16,"
    "v5e:4x4/10000000/shard/bf16,v5e:4x4/1000000/rep/bf16,v5e:4x4/10000000/rep/bf16,"
    "v5p:2x2x4/10000000/shard/bf16,v4:2x2x2/85742/rep/bf16,v5e:4x4/85742/shard/bf16,"
    "v5e:4x4/10000000/shard/fp32")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def row_key(r):
  return (f"{r['topology']}/{r['num_classes']}/{'shard' if r['shard_centres'] else 'rep'}/"
          f"{'bf16' if r['dtype'] == 'bfloat16' else 'fp32'}")


def markdown(rows):
  from crfiqa_jax.train import plan
  gib = lambda b: "?" if b is None else f"{b / 2**30:.1f}"  # noqa: E731
  out = ["| topology (chips) | classes | centres | dtype | GiB/device (HBM) | fits | "
         "TFLOP/step | h at 100% MFU | chip-h at peak | MFU for 24 h |",
         "|---|---:|---|---|---:|---|---:|---:|---:|---:|"]
  def used(r):  # rows XLA refused to compile: a lower bound from its message
    if "error" not in r:
      return gib(r["per_device_bytes"])
    return "> " + gib(r["per_device_bytes"] or plan._oom_bytes(r["error"]))

  for r in rows:
    perf = ("| - | - | - | - |" if r["flops_per_step"] is None else
            f"| {r['flops_per_step'] / 1e12:.1f} | {r['hours_at_peak']:.1f} | "
            f"{r['chip_hours_at_peak']:.0f} | {100 * r['mfu_needed']:.0f}% |")
    out.append(f"| {r['topology']} ({r['chips']}) | {r['num_classes']:,} | "
               f"{'sharded' if r['shard_centres'] else 'replicated'} | "
               f"{'bf16' if r['dtype'] == 'bfloat16' else 'fp32'} | "
               f"{used(r)} ({gib(r['hbm_bytes'])}) | "
               f"{'yes' if r['fits'] else 'no'} " + perf)
  return "\n".join(out)


def main():
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
  from crfiqa_jax.train import config as config_lib
  from crfiqa_jax.train import plan
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="large")
  p.add_argument("--out", required=True)
  p.add_argument("--rows", default=DEFAULT_ROWS)
  p.add_argument("--hours", type=float, default=24.0)
  args = p.parse_args()
  out = Path(args.out)
  done = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
  have = {row_key(r) for r in done}
  for spec in args.rows.split(","):
    if spec in have:
      continue
    topology, classes, layout, dtype = spec.split("/")
    config = config_lib.load_config(args.config, {"dtype": DTYPES[dtype],
                                           "shard_centres": str(layout == "shard").lower()})
    r = plan.plan(config, plan.topology_devices(topology), num_classes=int(classes),
                  num_examples=config.paper_num_examples, hours=args.hours)
    r["topology"] = topology
    done.append(r)
    with out.open("a") as f:
      f.write(json.dumps(r) + "\n")
    print(f"{spec}: {r['per_device_bytes']} B/device, fits {r['fits']}, "
          f"compiled in {r['compile_s']:.0f} s", flush=True)
  print(markdown(done))


if __name__ == "__main__":
  main()
