"""The training loop of one run and what it writes beside the checkpoints.

`Loop.run(state, data_iter)` feeds one batch per step with this process's stop flag, reads
each step's metrics one step late (they are ready by then, so the host never waits on the
device), checks and logs them into WORKDIR/metrics.jsonl (`MetricsFile`), and saves a
checkpoint every checkpoint_every steps, at the end and at an agreed stop, each only after
the step's metrics and its state were found finite. crfiqa_jax.train.trainer builds the
jitted step (with the stop flag's reduction and the skip_step guard) and calls it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import jax
import numpy as np

from crfiqa_jax import cli, faults, sharding
from crfiqa_jax.train import checkpoint

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
MAX_SKIPS_IN_A_ROW = 10    # nan_policy=skip_step: more skipped steps in a row is divergence
CHECKED = ("loss", "loss_arc", "loss_cr", "grad_norm")  # the metrics that must be finite


class NonFiniteLossError(cli.Diverged):
  """A non-finite loss or gradient norm (exit code 3)."""


class MetricsFile:
  """WORKDIR/metrics.jsonl, one JSON line per logged step, each written whole (a full disk
  is DiskFull, never a torn line). Opened on resume at step `step`, it first drops the lines
  of later steps (a killed run logged them after its last checkpoint) and a torn last line,
  so the file reads as one uninterrupted run."""

  def __init__(self, path: Path, step: int):
    self.path = path
    if path.exists():
      data = path.read_bytes()
      keep = [ln for ln in data.splitlines(keepends=True)
              if ln.endswith(b"\n") and _logged_step(ln) <= step]
      if b"".join(keep) != data:
        faults.write_atomic(path, b"".join(keep))
    self.f = open(path, "ab")

  def write(self, record: dict) -> None:
    faults.append(self.f, (json.dumps(record) + "\n").encode(), self.path)

  def close(self) -> None:
    self.f.close()


def _logged_step(line: bytes) -> float:
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return math.inf  # not a complete record: dropped


class Loop:
  """One run's loop over `trainer` (crfiqa_jax.train.trainer.Trainer: step_fn, all_finite,
  mesh, total_steps). After `run`, `step` is the last step done and `stopped` whether the
  processes agreed to stop before total_steps (the state of `step` is then saved)."""

  def __init__(self, config, trainer, ckpts: checkpoint.Checkpoints,
               stop: faults.StopRequest, metrics_file: MetricsFile | None):
    self.config, self.trainer, self.ckpts, self.stop = config, trainer, ckpts, stop
    self.metrics_file = metrics_file
    self.total = trainer.total_steps
    self.step = 0
    self.stopped = self.stopping = False
    self.skips_in_a_row = self.skips = 0
    self.saved: int | None = ckpts.latest

  def run(self, state, data_iter):
    self.step = step = int(state.step)
    every = max(1, int(self.config.checkpoint_every))
    self.t0, self.n0 = time.perf_counter(), step
    pending, agreed = None, False
    while step < self.total:
      local = dict(next(data_iter))
      local["stop"] = np.full(len(local["label"]), bool(self.stop), np.int8)
      state, metrics = self.trainer.step_fn(state, sharding.global_batch(local,
                                                                         self.trainer.mesh))
      self.step = step = step + 1
      if pending is not None:  # the previous step's metrics, while this one runs
        agreed |= self._settle(*pending)
      pending = (step, metrics)
      if agreed or step % every == 0 or step == self.total:
        agreed |= self._settle(*pending)
        pending = None
        self._save(step, state, data_iter)
        if agreed and step < self.total:
          self.stopped = True
          break
    if self.skips:
      log.warning("%d steps were skipped for a non-finite loss (nan_policy=skip_step)",
                  self.skips)
    return state

  def _settle(self, step: int, metrics) -> bool:
    """Checks and logs one step's metrics; whether any process asked to stop by then."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    asked = m.pop("stop", 0.0) > 0
    skipped = m.get("skipped", 0.0) > 0
    bad = {k: m[k] for k in CHECKED if not math.isfinite(m[k])}
    if skipped:
      self.skips += 1
      self.skips_in_a_row += 1
      log.warning("step %d: non-finite %s: update skipped (%d in a row, %d in this run)",
                  step, _describe(bad or {"state": math.nan}), self.skips_in_a_row, self.skips)
      if self.skips_in_a_row > MAX_SKIPS_IN_A_ROW:
        self._log(step, m)
        raise NonFiniteLossError(f"{self.skips_in_a_row} steps in a row up to step {step} "
                                 f"had a non-finite loss and were skipped; {self._newest()}. "
                                 + _ADVICE)
    else:
      self.skips_in_a_row = 0
      if bad:
        self._log(step, m)
        raise NonFiniteLossError(f"non-finite {_describe(bad)} at step {step}; "
                                 f"{self._newest()}. " + _ADVICE)
    if step % self.config.log_every == 0 or step == self.total or skipped:
      self._log(step, m)
    if asked and not self.stopping and jax.process_index() == 0:
      log.info("stop requested (%s): saving step %d", self.stop.name or "by another process",
               self.step)
    self.stopping |= asked
    return asked

  def _log(self, step: int, m: dict) -> None:
    dt = time.perf_counter() - self.t0
    m["images_per_s"] = (step - self.n0) * self.config.batch_size / max(dt, 1e-9)
    self.t0, self.n0 = time.perf_counter(), step
    if self.metrics_file is None:
      return
    eta = (self.total - step) * self.config.batch_size / max(m["images_per_s"], 1e-9)
    log.info("step %d/%d loss %.3f (arc %.3f cr %.4f) CR %.3f CCS %.3f NNCCS %.3f "
             "lr %.3g |g| %.2f %.0f img/s eta %.0fs", step, self.total, m["loss"],
             m["loss_arc"], m["loss_cr"], m["cr"], m["ccs"], m["nnccs"], m["lr"],
             m["grad_norm"], m["images_per_s"], eta)
    self.metrics_file.write({"step": step, **m})

  def _save(self, step: int, state, data_iter) -> None:
    if not bool(self.trainer.all_finite(state)):
      raise NonFiniteLossError(f"the train state after step {step} is not finite (its loss "
                               f"was); {self._newest()}. " + _ADVICE)
    self.ckpts.save(step, state, data_iter)
    self.saved = step

  def _newest(self) -> str:
    if self.saved is None:
      return "no checkpoint was saved before it"
    return (f"the newest checkpoint, step {self.saved} in {self.ckpts.directory}, is from "
            "before it")


_ADVICE = ("Lower --config.lr, check the data, or rerun with --config.nan_policy=skip_step "
           "(rerunning as is resumes from that checkpoint and diverges again)")


def _describe(bad: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in bad.items())
