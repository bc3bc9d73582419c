"""The paper's Table 1 ablation on the demo data: held-out Spearman and ERC AUCs per method.

    python benchmarks/ablation.py [--out runs/ablation] [--seeds 0 1 2] [--epochs 16]
                                  [--methods cr_paper cr_code ccs ontop igfiqa]

Every method is one `python -m crfiqa_jax.main --config=demo` run on the same synthetic
data (generated once into OUT/data), with one seed per column of runs:

  cr_paper  CR-FIQA, CR = CCS/(NNCCS + 1 + ε) (paper eq. 4)
  cr_code   CR-FIQA, CR = CCS/NNCCS (released training code; --config.cr_form=code)
  ccs       CCS-FIQA: regress CCS instead of CR (--config.target=ccs)
  ontop     a plain ArcFace model (λ = 0; run `arcface`) trained first, then only the
            quality head on top of it, backbone and centres frozen
            (--config.init_checkpoint=ARCFACE_WORKDIR --config.trainable=qs, lr 0.04:
            the demo's lr × 0.1 as the paper's 0.01 vs 0.1)
  igfiqa    IG-FIQA (--config.method=igfiqa)

Each run writes OUT/METHOD_sSEED/eval/metrics.json; runs whose metrics exist are not
repeated, so an interrupted ablation resumes where it stopped. The table gives, per
method, mean ± sd over the seeds that finished of Spearman(quality, true severity) and of
the ERC AUC ratio learned/random per threshold mode and FMR (lower is better for both;
ratio 1 = no better than random rejection), and the number of seeds behind each row.
--epochs scales the demo's schedule (decays at the same fractions of training); --set
applies config overrides to every run; --parallel runs several at once (on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "cr_paper": [],
    "cr_code": ["--config.cr_form=code"],
    "ccs": ["--config.target=ccs"],
    # lr 0.04 = the demo's 0.4 × 0.1, the paper's on-top/CR-FIQA lr ratio (0.01 / 0.1);
    # init_checkpoint is added in main().
    "ontop": ["--config.trainable=qs", "--config.lr=0.04"],
    "igfiqa": ["--config.method=igfiqa"],
}


def schedule_overrides(epochs: int) -> list[str]:
  """num_epochs and lr_decay_epochs for `epochs`, the decays at the demo's fractions."""
  sys.path.insert(0, str(ROOT))
  from crfiqa_jax.configs import demo
  c = demo.get_config()
  decays = tuple(max(1, round(d * epochs / c.num_epochs)) for d in c.lr_decay_epochs)
  return [f"--config.num_epochs={epochs}", f"--config.lr_decay_epochs={decays}"]


def _command(name: str, seed: int, out: Path, extra: list[str], config: str = "demo"
             ) -> list[str]:
  return [sys.executable, "-m", "crfiqa_jax.main", f"--config={config}",
          f"--workdir={out / f'{name}_s{seed}'}", f"--config.seed={seed}", *extra]


def _metrics(out: Path, name: str, seed: int) -> dict | None:
  path = out / f"{name}_s{seed}" / "eval" / "metrics.json"
  return json.loads(path.read_text()) if path.exists() else None


def run(name: str, seed: int, out: Path, extra: list[str], log) -> dict | None:
  """Trains and evaluates one run (unless done); returns its metrics or None on failure."""
  return run_many([(name, seed, extra, None)], out, log)[(name, seed)]


def run_many(jobs, out: Path, log, *, parallel: int = 1, deadline: float | None = None,
             stop: float | None = None, config: str = "demo"):
  """Runs jobs (name, seed, extra, after) of `--config=config` with up to `parallel` at
  once; `after` is the (name, seed) of a job that must succeed first, or None. Jobs not started by `deadline`
  (time.time()) are skipped; jobs still running at `stop` are killed. Returns
  {(name, seed): metrics or None}."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
  results = {}
  pending = list(jobs)
  running = {}
  while pending or running:
    if stop is not None and time.time() > stop:
      for key, (proc, f, t) in running.items():
        proc.kill()
        proc.wait()
        f.close()
        results[key] = None
        log(f"  {key[0]} seed {key[1]}: killed at the stop time")
      for name, seed, _, _ in pending:
        results[(name, seed)] = None
      break
    for key, (proc, f, t) in list(running.items()):
      if proc.poll() is not None:
        f.close()
        results[key] = _metrics(out, *key)
        log(f"  {key[0]} seed {key[1]}: exit {proc.returncode} after "
            f"{time.perf_counter() - t:.0f} s")
        del running[key]
    for job in list(pending):
      name, seed, extra, after = job
      if after is not None and after not in results:
        continue  # its prerequisite has not finished yet
      pending.remove(job)
      if after is not None and results[after] is None:
        log(f"  {name} seed {seed}: skipped, {after[0]} seed {after[1]} failed")
        results[(name, seed)] = None
        continue
      done = _metrics(out, name, seed)
      if done is not None:
        results[(name, seed)] = done
        continue
      if deadline is not None and time.time() > deadline:
        log(f"  {name} seed {seed}: skipped, past the deadline")
        results[(name, seed)] = None
        continue
      if len(running) >= parallel:
        pending.insert(0, job)
        break
      cmd = _command(name, seed, out, extra, config)
      log(f"$ {' '.join(cmd[1:])}")
      f = open(out / f"{name}_s{seed}.log", "w")
      proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
      running[(name, seed)] = (proc, f, time.perf_counter())
    time.sleep(0.5)
  return results


def prepare_data(data: Path, overrides: list[str]) -> None:
  """Generates the demo's synthetic data (with `overrides`) into `data` once, before any
  run, so that parallel runs never race to write it (or checks the data already there)."""
  sys.path.insert(0, str(ROOT))
  from crfiqa_jax.train import config as config_lib
  from crfiqa_jax.data import synthetic
  kv = dict(o[len("--config."):].split("=", 1) for o in overrides if o.startswith("--config."))
  config = config_lib.load_config("demo", kv)
  config.data_dir = str(data)
  synthetic.ensure_dataset(config)


def last_training_gap(workdir: Path, last: int = 5) -> float:
  """Mean CCS − mean NNCCS over the last `last` logged training batches (nan if none)."""
  path = workdir / "metrics.jsonl"
  rows = [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []
  rows = rows[-last:]
  return float(np.mean([r["ccs"] - r["nnccs"] for r in rows])) if rows else float("nan")


def summarise(results: dict[str, list[dict]], gaps: dict[str, list[float]]) -> str:
  """Markdown table: rows = methods, columns = Spearman and AUC ratios, mean ± sd."""
  cols = None
  lines = []
  for name, runs in results.items():
    if not runs:
      continue
    if cols is None:
      cols = [(mode, f) for mode in runs[0]["erc_auc"] for f in runs[0]["erc_auc"][mode]]
      head = ["method", "seeds", "Spearman ↓"] + [f"AUC/random {m} FMR {f} ↓" for m, f in cols]
      head.append("train CCS−NNCCS")
      lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = [name, str(len(runs)),
             _pm([r["spearman_quality_vs_severity"] for r in runs])]
    for mode, f in cols:
      cells.append(_pm([r["erc_auc"][mode][f]["learned"] / r["erc_auc"][mode][f]["random"]
                        for r in runs]))
    cells.append(_pm(gaps[name]))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _pm(xs) -> str:
  xs = np.asarray(xs, float)
  sd = xs.std(ddof=1) if len(xs) > 1 else float("nan")
  return f"{xs.mean():.3f} ± {sd:.3f}" if len(xs) > 1 else f"{xs.mean():.3f}"


def add_run_args(p: argparse.ArgumentParser) -> None:
  """--parallel, --deadline-min and --stop-min (shared with demo_seeds.py)."""
  p.add_argument("--parallel", type=int, default=1, help="runs at once (e.g. on a GPU)")
  p.add_argument("--deadline-min", type=float, default=None,
                 help="start no run after this many minutes")
  p.add_argument("--stop-min", type=float, default=None,
                 help="kill the runs still going after this many minutes")


def start(args, log_name: str):
  """(out folder, deadline, stop time, log function) from parsed arguments."""
  out = Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  deadline = None if args.deadline_min is None else time.time() + 60 * args.deadline_min
  stop = None if args.stop_min is None else time.time() + 60 * args.stop_min

  def log(msg):
    print(msg, flush=True)
    with open(out / log_name, "a") as f:
      f.write(msg + "\n")
  return out, deadline, stop, log


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/ablation", help="runs and data go here")
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  p.add_argument("--epochs", type=int, default=None,
                 help="training epochs of every run (default: the demo's)")
  p.add_argument("--ontop-epochs", type=int, default=None,
                 help="epochs of the on-top head (default: --epochs)")
  p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                 help="config overrides for every run (e.g. scale=32)")
  add_run_args(p)
  p.add_argument("--data", default=None,
                 help="synthetic data to reuse (default: generated into OUT/data)")
  args = p.parse_args(argv)
  out, deadline, stop, log = start(args, "ablation.log")

  common = [f"--config.{kv}" for kv in args.set]
  data = Path(args.data).resolve() if args.data else out / "data"
  prepare_data(data, common)
  common += [f"--config.data_dir={data}", f"--config.eval_data_dir={data}"]
  sched = schedule_overrides(args.epochs) if args.epochs else []
  ontop_sched = (schedule_overrides(args.ontop_epochs) if args.ontop_epochs else sched)
  jobs = []
  for seed in args.seeds:
    for name in args.methods:
      extra = common + METHODS[name] + sched
      after = None
      if name == "ontop":
        jobs.append(("arcface", seed, common + ["--config.lambda_cr=0"] + sched, None))
        after = ("arcface", seed)
        extra = common + METHODS[name] + ontop_sched + [
            f"--config.init_checkpoint={out / f'arcface_s{seed}'}"]
      jobs.append((name, seed, extra, after))
  done = run_many(jobs, out, log, parallel=args.parallel, deadline=deadline, stop=stop)
  results = {m: [] for m in args.methods}
  gaps = {m: [] for m in args.methods}
  for (name, seed), m in sorted(done.items(), key=lambda kv: kv[0][1]):
    if name not in results:
      continue
    if m is None:
      log(f"  {name} seed {seed}: no metrics (see {out / f'{name}_s{seed}.log'})")
      continue
    results[name].append(m)
    gaps[name].append(last_training_gap(out / f"{name}_s{seed}"))
  table = summarise(results, gaps)
  log("\nHeld-out demo identities; mean ± sd over seeds; AUC/random = learned ERC AUC "
      "divided by random rejection's (lower is better).\n\n" + table)
  (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
  main()
