"""Preemption of the 2-process demo: SIGTERM at random times, then the same command again,
ends with the parameters of an uninterrupted run, bit for bit.

    python benchmarks/preemption.py [--out runs/preemption] [--runs 5] [--steps 200]
        [--seed 0] [--identities 50] [--per-identity 20]

The job is `python -m crfiqa_jax.main --config=demo` on two processes (jax.distributed over
loopback, one CPU device each) with a smaller synthetic set. First one uninterrupted pair
trains OUT/reference (and writes the synthetic data the other runs share). Then, for each
run, a fresh pair starts in OUT/run_K; at a random moment between its first logged step
and its expected end, SIGTERM goes to both processes (a slice's preemption notice) or to
one of them (one node's notice), drawn at random. Both must exit with code 75; the same
command is then started again and must finish with code 0. The final checkpoint's train
state (parameters, BatchNorm statistics, optimiser state) must equal the reference's bit
for bit. Printed per run: who got the signal and when, the step the pair stopped at, the
seconds from the signal to the exit of the last process (the target: within 30 s, the grace
period of a spot VM or a Kubernetes pod), and whether the states are equal. The exit code
is 0 only when every run met all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only reads checkpoints
import jax  # noqa: E402
import numpy as np  # noqa: E402

from crfiqa_jax.serve import model_io  # noqa: E402

GRACE_S = 30.0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(args, workdir: Path, data_dir: Path | None) -> list[str]:
  cmd = [sys.executable, "-m", "crfiqa_jax.main", "--config=demo", f"--workdir={workdir}",
         f"--config.total_steps={args.steps}", "--config.log_every=1",
         f"--config.synthetic.identities={args.identities}",
         f"--config.synthetic.per_identity={args.per_identity}",
         "--config.synthetic.eval_identities=10", "--config.synthetic.eval_per_identity=5",
         "--config.eval_batch_size=32"]
  if data_dir is not None:  # the reference's synthetic data, generated once
    cmd += [f"--config.data_dir={data_dir}", f"--config.eval_data_dir={data_dir}"]
  return cmd


def _env(out: Path) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(out / "jax_cache"))
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  return env


def _start_pair(args, workdir: Path, data_dir: Path | None, out: Path, log_name: str):
  port = _free_port()
  logs = [open(workdir.parent / f"{log_name}.p{i}.log", "w") for i in range(2)]
  procs = [subprocess.Popen(
      _command(args, workdir, data_dir) + [f"--coordinator=127.0.0.1:{port}",
                                           "--num_processes=2", f"--process_id={i}"],
      env=_env(out), stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  return procs, logs


def _wait(procs, logs, timeout: float) -> list[int]:
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    raise
  finally:
    for f in logs:
      f.close()
  return codes


def _logged_steps(workdir: Path) -> int:
  path = workdir / "metrics.jsonl"
  return path.read_bytes().count(b"\n") if path.exists() else 0


def _final_state(workdir: Path):
  _, state, step = model_io.read_workdir(workdir)
  return step, {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}


def _tail(path: Path, n: int = 3) -> str:
  lines = [ln for ln in path.read_text(errors="replace").splitlines()
           if not ln.startswith(("I1", "W1"))]
  return "\n    ".join(lines[-n:])


def run_one(args, k: int, rng: random.Random, out: Path, ref_data: Path,
            t_train: float) -> dict:
  """One run: start, SIGTERM at a random moment, check the exits, rerun, compare."""
  workdir = out / f"run_{k}"
  shutil.rmtree(workdir, ignore_errors=True)
  workdir.mkdir(parents=True)
  procs, logs = _start_pair(args, workdir, ref_data, out, "first")
  while _logged_steps(workdir) < 1 and all(p.poll() is None for p in procs):
    time.sleep(0.05)
  delay = rng.uniform(0.0, max(1.0, t_train * 0.8))
  who = rng.choice(["both", "process 0", "process 1"])
  time.sleep(delay)
  targets = {"both": procs, "process 0": procs[:1], "process 1": procs[1:]}[who]
  t_sig = time.perf_counter()
  step_at_signal = _logged_steps(workdir)
  for p in targets:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  exited = []
  for p in procs:
    p.wait(timeout=600)
    exited.append(time.perf_counter() - t_sig)
  _wait(procs, logs, 1)
  codes = [p.returncode for p in procs]
  saved = sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())
  stop_step = saved[-1] if saved else None
  t0 = time.perf_counter()
  procs, logs = _start_pair(args, workdir, ref_data, out, "resume")
  resume_codes = _wait(procs, logs, 3600)
  resume_s = time.perf_counter() - t0
  result = {"run": k, "signal_to": who, "signal_after_s": delay,
            "logged_steps_at_signal": step_at_signal, "stop_step": stop_step,
            "exit_codes": codes, "signal_to_exit_s": max(exited),
            "resume_exit_codes": resume_codes, "resume_s": resume_s}
  if resume_codes == [0, 0]:
    _, ref = _final_state(out / "reference")
    step, got = _final_state(workdir)
    result["final_step"] = step
    result["equal"] = set(ref) == set(got) and all(np.array_equal(ref[n], got[n]) for n in ref)
  else:
    result["equal"] = False
    result["log"] = _tail(workdir.parent / "resume.p0.log")
  result["ok"] = bool(codes == [75, 75] and result["equal"]
                      and result["signal_to_exit_s"] <= GRACE_S)
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/preemption")
  p.add_argument("--runs", type=int, default=5)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--identities", type=int, default=50)
  p.add_argument("--per-identity", type=int, default=20)
  args = p.parse_args(argv)
  out = Path(args.out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  rng = random.Random(args.seed)

  ref = out / "reference"
  shutil.rmtree(ref, ignore_errors=True)
  ref.mkdir()
  t0 = time.perf_counter()
  procs, logs = _start_pair(args, ref, None, out, "reference")
  t_first = None
  while any(p.poll() is None for p in procs):
    if t_first is None and _logged_steps(ref) >= 1:
      t_first = time.perf_counter()
    time.sleep(0.05)
  codes = _wait(procs, logs, 1)
  t_end = time.perf_counter()
  if codes != [0, 0]:
    print(f"the reference run failed with {codes}:\n    {_tail(out / 'reference.p0.log', 8)}")
    return 1
  t_train = t_end - (t_first or t0)
  print(f"reference: {args.steps} steps in {t_end - t0:.1f} s ({t_train:.1f} s from the "
        f"first logged step), exit codes {codes}", flush=True)

  results = []
  for k in range(1, args.runs + 1):
    r = run_one(args, k, rng, out, ref / "data", t_train)
    results.append(r)
    print(f"run {k}: SIGTERM to {r['signal_to']} {r['signal_after_s']:.1f} s after the first "
          f"step ({r['logged_steps_at_signal']} steps logged) → stopped at step "
          f"{r['stop_step']}, exit codes {r['exit_codes']}, {r['signal_to_exit_s']:.1f} s "
          f"from signal to exit; resumed: exit codes {r['resume_exit_codes']} in "
          f"{r['resume_s']:.1f} s; final state equal to the reference: {r['equal']}",
          flush=True)
    if "log" in r:
      print(f"    {r['log']}")
  worst = max(r["signal_to_exit_s"] for r in results)
  ok = all(r["ok"] for r in results)
  print(f"{sum(r['ok'] for r in results)}/{len(results)} runs stopped with exit code 75 on "
        f"every process and resumed to the reference's exact state; signal to exit: "
        f"{min(r['signal_to_exit_s'] for r in results):.1f}–{worst:.1f} s (target ≤ "
        f"{GRACE_S:.0f} s)")
  (out / "summary.json").write_text(json.dumps(results, indent=1))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
