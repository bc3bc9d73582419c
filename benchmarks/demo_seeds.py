"""Is the demo healthy on every seed? Trains `--config=demo` variants over seeds and checks
each run against the demo's targets (docs/demo.md):

    python benchmarks/demo_seeds.py [--out runs/demo_seeds] [--seeds 0 1 2]
        [--variant NAME KEY=VALUE ...] [--parallel N] [--methods cr_paper igfiqa]

  healthy   mean training CCS − mean NNCCS over the last 5 logged batches ≥ 0.1
  ranking   held-out Spearman(quality, true severity) ≤ −0.5
  ERC       learned/random ERC AUC ≤ 0.7 in every threshold mode and FMR

Every variant is the demo config plus its KEY=VALUE overrides (`--variant default` has
none); runs of one variant share OUT/VARIANT/data. It prints one line per run and, per
variant, how many runs pass all three, and writes OUT/summary.json (the variant that
passes most runs first, ties broken by the worst Spearman). This is how configs/demo.py's
levers were chosen (docs/demo.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (benchmarks/ablation.py: the runner)

TARGET_GAP, TARGET_SPEARMAN, TARGET_AUC = 0.1, -0.5, 0.7


def verdict(metrics: dict | None, gap: float) -> dict:
  """The targets of one run: gap, Spearman, the worst AUC ratio, and pass/fail."""
  if metrics is None:
    return {"ok": False, "gap": gap, "spearman": float("nan"), "worst_auc": float("nan")}
  ratios = [v["learned"] / v["random"] for mode in metrics["erc_auc"].values()
            for v in mode.values()]
  rho = float(metrics["spearman_quality_vs_severity"])
  worst = float(max(ratios))
  ok = bool(gap >= TARGET_GAP and rho <= TARGET_SPEARMAN and worst <= TARGET_AUC)
  return {"ok": ok, "gap": gap, "spearman": rho, "worst_auc": worst}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/demo_seeds")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                 help="a variant: its name, then its overrides (repeatable)")
  p.add_argument("--methods", nargs="+", default=["cr_paper"],
                 choices=["cr_paper", "igfiqa"])
  ablation.add_run_args(p)
  args = p.parse_args(argv)
  variants = {v[0]: v[1:] for v in (args.variant or [["default"]])}
  out, deadline, stop, log = ablation.start(args, "demo_seeds.log")

  commons = {}
  for name, kvs in variants.items():
    (out / name).mkdir(exist_ok=True)
    common = [f"--config.{kv}" for kv in kvs]
    data = out / f"data_{_data_key(common)}"  # variants with the same data share it
    ablation.prepare_data(data, common)
    commons[name] = common + [f"--config.data_dir={data}", f"--config.eval_data_dir={data}"]
  # Seed-major order: past a deadline, the last seeds are the ones skipped. Job name
  # VARIANT/METHOD: its workdir is OUT/VARIANT/METHOD_sSEED.
  queue = [(f"{name}/{method}", seed, commons[name] + ablation.METHODS[method], None)
           for seed in args.seeds for method in args.methods for name in variants]
  results = ablation.run_many(queue, out, log, parallel=args.parallel, deadline=deadline,
                              stop=stop)
  summary = {}
  for name, kvs in variants.items():
    rows = []
    for method in args.methods:
      for seed in args.seeds:
        key = (f"{name}/{method}", seed)
        gap = ablation.last_training_gap(out / name / f"{method}_s{seed}")
        v = verdict(results.get(key), gap)
        rows.append({"method": method, "seed": seed, **v})
        log(f"{name:>14s} {method:8s} seed {seed}: gap {v['gap']:+.3f}  Spearman "
            f"{v['spearman']:+.3f}  worst AUC/random {v['worst_auc']:.3f}  "
            f"{'PASS' if v['ok'] else 'fail'}")
    spear = [r["spearman"] for r in rows]
    summary[name] = {"overrides": kvs, "passed": sum(r["ok"] for r in rows),
                     "runs": len(rows), "worst_spearman": float(np.nanmax(spear))
                     if not all(np.isnan(spear)) else float("nan"), "rows": rows}
  order = sorted(summary, key=lambda n: (-summary[n]["passed"],
                                         np.nan_to_num(summary[n]["worst_spearman"], nan=9)))
  for n in order:
    log(f"{n}: {summary[n]['passed']}/{summary[n]['runs']} pass all targets; worst "
        f"Spearman {summary[n]['worst_spearman']:+.3f}; overrides {summary[n]['overrides']}")
  (out / "summary.json").write_text(json.dumps({n: summary[n] for n in order}, indent=1))


def _data_key(overrides: list[str]) -> str:
  """A short name for the synthetic data a variant's overrides describe."""
  from crfiqa_jax.train import config as config_lib
  from crfiqa_jax.data import synthetic
  kv = dict(o[len("--config."):].split("=", 1) for o in overrides)
  c = config_lib.load_config("demo", kv)
  params = synthetic.generator_params(image_size=c.image_size, **c.synthetic.to_dict())
  return "_".join(str(params[k]) for k in sorted(params))


if __name__ == "__main__":
  main()
