"""The training loop's faults: a diverging run stops naming the step and the metric with the
last good checkpoint the newest; skip_step drops a non-finite update inside the jitted step
and gives up after MAX_SKIPS_IN_A_ROW; metrics.jsonl is cut back to the restored step on
resume and never gets a torn line on a full disk."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import cli, faults, sharding
from crfiqa_jax.serve import model_io
from crfiqa_jax.train import loop
from crfiqa_jax.train.step import TrainState
from crfiqa_jax.train.trainer import NonFiniteLossError, guarded_step, train
from helpers import FULL_DISK, fill, file_size_limit, small_filesystem, tiny_config



def ONE_DEVICE():  # a small program compiles faster; these tests are about the loop
  return sharding.make_mesh(jax.devices()[:1])


def _finite(tree) -> bool:
  return all(np.isfinite(x).all() for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_divergence_stops_before_a_bad_state_is_saved(tiny_records, tmp_path):
  """lr 1e30 without clipping blows up within a few steps; with a checkpoint every step the
  newest one must still be the step before the non-finite loss, and finite."""
  cfg = tiny_config(data_dir=tiny_records, total_steps=20, lr=1e30, clip_norm=0.0,
                    checkpoint_every=1)
  with pytest.raises(NonFiniteLossError) as e:
    train(cfg, tmp_path, mesh=ONE_DEVICE())
  assert isinstance(e.value, cli.Diverged)
  msg = str(e.value)
  bad_step = int(msg.split(" at step ")[1].split(";")[0]) if " at step " in msg else None
  assert bad_step is not None and "loss" in msg, msg
  _, state, newest = model_io.read_workdir(tmp_path)
  assert newest == bad_step - 1 and f"step {newest} in" in msg  # named, and the newest
  assert _finite(state["params"]) and _finite(state["batch_stats"])
  logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert logged[-1]["step"] == bad_step and not np.isfinite(logged[-1]["loss"])


def test_guarded_step_keeps_the_state_on_a_non_finite_update():
  """A stand-in step that adds 1 to the parameter, or NaN when the batch says so."""
  def fake_step(state, batch):
    bump = jnp.where(batch["bad"][0] > 0, jnp.nan, 1.0)
    new = state.replace(step=state.step + 1, params=state.params + bump)
    return new, {"loss": jnp.sum(new.params), "grad_norm": jnp.float32(1.0)}

  state = TrainState(step=jnp.int32(4), params=jnp.float32(2.0), batch_stats={},
                     opt_state={}, rng=jnp.zeros(2, jnp.uint32))
  step = jax.jit(lambda s, b: guarded_step(s, b, step=fake_step, skip_nonfinite=True))
  good = {"bad": jnp.zeros(3, jnp.int8), "stop": jnp.array([0, 1, 0], jnp.int8)}
  s1, m1 = step(state, good)
  assert (int(s1.step), float(s1.params), int(m1["skipped"]), int(m1["stop"])) == (5, 3.0, 0, 1)
  s2, m2 = step(s1, {"bad": jnp.ones(3, jnp.int8)})
  assert (int(s2.step), float(s2.params), int(m2["skipped"])) == (6, 3.0, 1)
  assert "stop" not in m2  # no flag fed, none reduced
  plain = jax.jit(lambda s, b: guarded_step(s, b, step=fake_step, skip_nonfinite=False))
  s3, m3 = plain(s1, {"bad": jnp.ones(3, jnp.int8)})
  assert np.isnan(float(s3.params)) and "skipped" not in m3


def test_skip_step_counts_and_gives_up_after_too_many_in_a_row(tiny_records, tmp_path,
                                                              caplog):
  """Every step after the first is non-finite at lr 1e30: each is skipped, warned about and
  logged with "skipped": 1, and the eleventh in a row is divergence (what a skip keeps is
  test_guarded_step_keeps_the_state_on_a_non_finite_update's)."""
  cfg = tiny_config(data_dir=tiny_records, total_steps=30, lr=1e30, clip_norm=0.0,
                    checkpoint_every=1000, nan_policy="skip_step")
  with pytest.raises(NonFiniteLossError, match=f"{loop.MAX_SKIPS_IN_A_ROW + 1} steps in a row"):
    train(cfg, tmp_path, mesh=ONE_DEVICE())
  skipped = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
  assert len(skipped) == loop.MAX_SKIPS_IN_A_ROW + 1
  logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  flags = [r["skipped"] for r in logged]
  first = flags.index(1.0)
  assert flags[first:] == [1.0] * (loop.MAX_SKIPS_IN_A_ROW + 1) and not any(flags[:first])
  assert f"step {logged[first]['step']}: non-finite loss=nan" in skipped[0]
  with pytest.raises(ValueError, match="nan_policy"):
    train(tiny_config(data_dir=tiny_records, nan_policy="ignore"), tmp_path / "x")


def test_metrics_file_is_cut_back_to_the_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
                  + '{"step": 6, "lo')
  f = loop.MetricsFile(path, 3)
  f.write({"step": 4, "loss": 2.0})
  f.close()
  assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("how", FULL_DISK)
def test_metrics_file_on_a_full_disk_keeps_whole_lines(tmp_path, how):
  line = {"step": 1, "loss": 1.0, "note": "x" * 3000}
  if how == "tmpfs":
    with small_filesystem(tmp_path / "fs", 64 * 1024) as fs:
      path = fs / "metrics.jsonl"
      f = loop.MetricsFile(path, 0)
      fill(fs, 4096 + 1024)  # room for one line, not two
      f.write(line)
      with pytest.raises(faults.DiskFull) as e:
        f.write(dict(line, step=2))
      f.close()
      text = path.read_text()
  else:
    path = tmp_path / "metrics.jsonl"
    f = loop.MetricsFile(path, 0)
    with file_size_limit(4096):
      f.write(line)
      with pytest.raises(faults.DiskFull) as e:
        f.write(dict(line, step=2))
    f.close()
    text = path.read_text()
  assert [json.loads(x)["step"] for x in text.splitlines()] == [1] and text.endswith("\n")
  need = len(json.dumps(dict(line, step=2))) + 1
  assert str(path) in str(e.value) and f"needs {need:,} bytes" in str(e.value)
