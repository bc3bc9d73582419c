"""CR-FIQA trained on real photos, judged on unseen people against no-training baselines.

    python benchmarks/real_faces.py --data=CELEBA_ROOT [--out runs/real_faces]
        [--seeds 0 1 2] [--variants celeba simple igfiqa] [--fr dlib]

CELEBA_ROOT is a CelebA-layout folder (`identity_CelebA.txt` and the images it names; a
sample will do). Nothing of it is copied into the repository. Steps, each timed:

1. `prepare celeba CELEBA_ROOT OUT/data` (once; reused when present).
2. The synthetic-only baseline: `--config=demo` into OUT/demo_s0 (or `--demo=WORKDIR`),
   the model a user gets without real data, scored on the same held-out photos.
3. For every variant and seed: `--config=celeba` plus the variant's overrides into
   OUT/VARIANT_sSEED; its held-out report (crfiqa_jax.evaluation.realfaces) scores the learned quality
   and every baseline on the same pairs.

Variants (overrides of configs/celeba.py):
  celeba    the config as shipped: IG-FIQA on the simple path's recipe
  simple    the simple path: CR-FIQA with the demo's recipe at 112 px, 12 epochs, from
            scratch (the CR-FIQA row)
  others    see VARIANTS below (the ones tried for docs/real-faces.md)

Prints, per FR model, mean ± sd over seeds of the ERC AUC (released table, recomputed
threshold, FMR 1e-2 and 1e-3) and of the standard pAUC@0.2 (FMR 1e-3) of every variant's
learned quality and of every baseline (lower is better), then whether the first variant
beats every baseline and the simple path by 10 %. Runs with metrics are reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablation  # noqa: E402  (benchmarks/ablation.py: the run scheduler)

# The simple path: the demo's recipe (CR-FIQA) at 112 px for 12 epochs, from scratch.
SIMPLE = ["--config.method=crfiqa", "--config.image_size=112", "--config.num_epochs=12",
          "--config.lr_decay_epochs=(7, 11)", "--config.augment_batch=false"]
VARIANTS = {
    "celeba": [],          # as shipped: IG-FIQA on the simple path's recipe
    "simple": SIMPLE,
    # The training batch itself degraded at random (CR-FIQA).
    "aug": SIMPLE + ["--config.augment_batch=true"],
    "px64": SIMPLE[:1] + ["--config.image_size=64", "--config.num_epochs=24",
                          "--config.lr_decay_epochs=(14, 21)"],
    "px48": SIMPLE[:1] + ["--config.image_size=48", "--config.num_epochs=30",
                          "--config.lr_decay_epochs=(18, 27)"],
    # The demo's synthetic model as the starting point (48 px, its own image size).
    "finetune_demo": SIMPLE[:1] + ["--config.image_size=48", "--config.init_centres=means",
                                   "--config.init_checkpoint={demo}"],
}
COLUMNS = ("erc_auc_1e-2", "erc_auc_1e-3", "pauc_1e-3")


def _timed(cmd: list[str], log, logfile: Path) -> float:
  log(f"$ {' '.join(cmd)}")
  t = time.perf_counter()
  with open(logfile, "w") as f:
    rc = subprocess.call(cmd, cwd=ablation.ROOT, stdout=f, stderr=subprocess.STDOUT)
  dt = time.perf_counter() - t
  if rc:
    raise SystemExit(f"failed (exit {rc}) after {dt:.0f} s; see {logfile}")
  log(f"  {dt:.0f} s")
  return dt


def summarise(results: dict[str, list[dict]], fr: str) -> tuple[str, dict]:
  """Markdown table (rows: variants' learned quality, then baselines) and the means."""
  rows: dict[str, list[dict]] = {}
  for variant, runs in results.items():
    for m in runs:
      if fr not in m["summary"]:
        continue
      by = m["summary"][fr]
      rows.setdefault(f"{variant} (learned)", []).append(by["learned"])
      for name, v in by.items():
        if name != "learned":
          rows.setdefault(name, []).append(v)  # identical across runs but for compare
  head = ["quality", "runs"] + [f"{c} ↓" for c in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  means = {}
  for name, vals in rows.items():
    cells = [name, str(len(vals))]
    for c in COLUMNS:
      xs = np.array([v[c] for v in vals])
      cells.append(f"{xs.mean():.4f} ± {xs.std(ddof=1):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}")
    means[name] = {c: float(np.mean([v[c] for v in vals])) for c in COLUMNS}
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines), means


def verdict(means: dict, first: str) -> list[str]:
  """Whether `first`'s learned quality is below every baseline, and 10 % below simple's."""
  mine = means.get(f"{first} (learned)")
  if mine is None:
    return [f"{first}: no finished run"]
  out = []
  for name, v in means.items():
    if name.endswith("(learned)") and name != "simple (learned)":
      continue
    for c in COLUMNS:
      ratio = mine[c] / v[c] if v[c] else float("nan")
      need = 0.9 if name == "simple (learned)" else 1.0
      out.append(f"  {first} vs {name} {c}: {ratio:.3f} of it "
                 f"({'met' if ratio <= need else 'NOT met'}: ≤ {need})")
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", required=True, help="CelebA-layout folder")
  p.add_argument("--out", default="runs/real_faces")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--variants", nargs="+", default=["celeba", "simple"],
                 choices=list(VARIANTS))
  p.add_argument("--demo", default=None, help="a trained --config=demo workdir to reuse")
  p.add_argument("--fr", nargs="+", default=["dlib", "own"])
  p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                 help="config overrides for every run")
  ablation.add_run_args(p)
  args = p.parse_args(argv)
  out, deadline, stop, log = ablation.start(args, "real_faces.log")
  py = sys.executable

  data = out / "data"
  if not (data / "face_records").exists():
    _timed([py, "-m", "crfiqa_jax.prepare", "celeba", args.data, str(data)], log,
           out / "prepare.log")
  demo = Path(args.demo).resolve() if args.demo else out / "demo_s0"
  if not (demo / "checkpoints").exists():
    _timed([py, "-m", "crfiqa_jax.main", "--config=demo", f"--workdir={demo}"], log,
           out / "demo_s0.log")

  common = [f"--config.data_dir={data}", f"--config.eval_data_dir={data}",
            f"--config.compare_quality=synthetic_demo={demo}"]
  common += [f"--config.{kv}" for kv in args.set]
  jobs = [(v, s, common + [o.format(demo=demo) for o in VARIANTS[v]], None)
          for s in args.seeds for v in args.variants]
  done = ablation.run_many(jobs, out, log, parallel=args.parallel, deadline=deadline,
                           stop=stop, config="celeba")
  results = {v: [] for v in args.variants}
  for (v, seed), m in sorted(done.items(), key=lambda kv: kv[0][1]):
    if m is None:
      log(f"  {v} seed {seed}: no metrics (see {out / f'{v}_s{seed}.log'})")
    else:
      results[v].append(m)
  for fr in args.fr:
    table, means = summarise(results, fr)
    log(f"\nHeld-out identities, FR model {fr}; mean ± sd over seeds; lower is better.\n\n"
        + table)
    (out / f"table_{fr}.md").write_text(table + "\n")
    log("\n".join(verdict(means, args.variants[0])))
  walls = {f"{v}_s{s}": m.get("wall_seconds") for (v, s), m in done.items() if m}
  (out / "walls.json").write_text(json.dumps(walls, indent=1))
  log("wall seconds per run (train + report): " + json.dumps(walls))


if __name__ == "__main__":
  main()
