"""Train-state checkpoints: a run resumes on another device count (centres re-padded),
read_workdir reads whatever wrote it, and a damaged newest step (a missing, truncated or
garbled array file, an empty step folder) is warned about in one line and passed over for
the newest readable one: moved aside when resuming, left in place when scoring; only when
none is readable is it one error line and exit code 2."""

import shutil

import jax
import numpy as np
import pytest

from crfiqa_jax import main, sharding
from crfiqa_jax.serve import model_io
from crfiqa_jax.train import checkpoint
from crfiqa_jax.train.trainer import Trainer, train
from helpers import TINY, as_numpy, tiny_config


def _cfg(data_dir, **kw):
  return tiny_config(data_dir=data_dir, shard_centres="true", **kw)


def test_resume_on_another_device_count(tiny_records, tmp_path):
  mesh4 = sharding.make_mesh(jax.devices()[:4])
  mesh2 = sharding.make_mesh(jax.devices()[:2])
  straight = train(_cfg(tiny_records, total_steps=4, checkpoint_every=2),
                         tmp_path / "a", mesh=mesh4)
  train(_cfg(tiny_records, total_steps=2, checkpoint_every=2), tmp_path / "b",
              mesh=mesh4)
  # 10 classes: padded to 12 on 4 devices, 10 on 2; the checkpoint is re-padded.
  resumed = train(_cfg(tiny_records, total_steps=4, checkpoint_every=2),
                        tmp_path / "b", mesh=mesh2)
  assert int(resumed.step) == 4 and resumed.params["centres"].shape == (32, 10)
  a, b = as_numpy(straight.params), as_numpy(resumed.params)
  a["centres"] = a["centres"][:, :10]
  for (k, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(k))
  # read_workdir (score, analyze) reads it whatever wrote it.
  _, state, step = model_io.read_workdir(tmp_path / "a")
  assert step == 4 and state["params"]["centres"].shape == (32, 12)


# --- A damaged newest step. --------------------------------------------------------------

def _biggest_array_file(step_dir):
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  return max(files, key=lambda f: f.stat().st_size)


def _missing_file(step_dir):
  _biggest_array_file(step_dir).unlink()


def _truncated(step_dir):
  f = _biggest_array_file(step_dir)
  f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _garbage(step_dir):
  f = _biggest_array_file(step_dir)
  f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))


def _emptied(step_dir):
  shutil.rmtree(step_dir)
  step_dir.mkdir()


DAMAGE = {"missing file": _missing_file, "truncated array file": _truncated,
          "garbage bytes": _garbage, "empty step directory": _emptied}


@pytest.fixture(scope="module")
def two_steps(tiny_records, tmp_path_factory):
  """A workdir with checkpoints at steps 2 and 4 (and the run's final state)."""
  wd = tmp_path_factory.mktemp("two_steps") / "wd"
  state = train(tiny_config(data_dir=tiny_records, total_steps=4, checkpoint_every=2), wd)
  return wd, as_numpy(state)


@pytest.mark.parametrize("damage", DAMAGE)
def test_restore_falls_back_past_a_damaged_newest_step(two_steps, tiny_records, tmp_path,
                                                       damage, caplog):
  wd0, _ = two_steps
  wd = tmp_path / "wd"
  shutil.copytree(wd0, wd)
  want2 = model_io.read_workdir(_only_step(wd0, 2, tmp_path / "only2"))[1]
  DAMAGE[damage](wd / "checkpoints" / "4")
  damaged_files = {p.relative_to(wd / "checkpoints" / "4"): p.read_bytes()
                   for p in (wd / "checkpoints" / "4").rglob("*") if p.is_file()}
  # Scoring from the workdir reads step 2 and leaves step 4 where it is.
  cfg, state, step = model_io.read_workdir(wd)
  assert step == 2 and (wd / "checkpoints" / "4").is_dir()
  jax.tree.map(np.testing.assert_array_equal, state, want2)
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any("checkpoint step 4" in w and "cannot be read" in w for w in warned), warned
  # Resuming moves it aside (every file as it was), restores step 2 exactly.
  caplog.clear()
  config = tiny_config(data_dir=tiny_records, total_steps=4, checkpoint_every=2)
  trainer = Trainer(config, num_classes=10, num_examples=160)
  ckpts = checkpoint.Checkpoints(wd)
  restored = ckpts.restore(trainer.abstract_target())
  ckpts.close()
  assert int(restored.step) == 2 and ckpts.mgr.all_steps() == [2]
  jax.tree.map(np.testing.assert_array_equal, as_numpy(restored.params), want2["params"])
  aside = wd / checkpoint.DAMAGED_DIR / "4"
  assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == (
      damaged_files)
  lines = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
  assert len(lines) == 1 and "step 4" in lines[0] and str(aside) in lines[0], lines


def _only_step(wd, step, dest):
  """A copy of workdir `wd` holding only checkpoint `step`."""
  shutil.copytree(wd, dest)
  for d in (dest / "checkpoints").iterdir():
    if d.name != str(step):
      shutil.rmtree(d)
  return dest


def test_rerun_with_a_truncated_newest_step_ends_as_uninterrupted(two_steps, tiny_records,
                                                                  tmp_path, capsys):
  """The command line: the same command resumes from step 2 and ends where the undamaged run
  ended; with no readable step left it is one error line and exit code 2."""
  wd0, final = two_steps
  wd = tmp_path / "wd"
  shutil.copytree(wd0, wd)
  _truncated(wd / "checkpoints" / "4")
  argv = ["--config=base", f"--workdir={wd}"] + [
      f"--config.{k}={v}" for k, v in dict(TINY, data_dir=tiny_records, total_steps=4,
                                           checkpoint_every=2).items()]
  assert main.main(argv) == 0
  _, state, step = model_io.read_workdir(wd)
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, state["params"], final.params)
  capsys.readouterr()
  for step_dir in (wd / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      _garbage(step_dir)
  assert main.main(argv) == 2
  err = capsys.readouterr().err
  lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1 and "no readable checkpoint" in lines[0] and "Traceback" not in err
  assert "step 4" in lines[0] and "step 2" in lines[0]
  assert sorted(d.name for d in (wd / "checkpoints").iterdir()) == ["2", "4"]  # left in place
