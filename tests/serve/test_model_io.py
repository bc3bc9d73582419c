"""Model I/O: every kind of model path is told apart, read back equal to what was written,
and refused with a message that lists the kinds."""

import json

import jax
import numpy as np
import pytest

from crfiqa_jax import models
from crfiqa_jax.serve import model_io
from crfiqa_jax.train.trainer import train
from helpers import as_numpy, random_variables, tiny_config


def test_kinds_by_name_and_content(tmp_path):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / model_io.CONFIG_FILE).write_text("{}")
  (tmp_path / "e").mkdir()
  (tmp_path / "e" / model_io.MODEL_FILE).write_text("{}")
  kinds = {p: model_io.model_kind(tmp_path / p) for p in ("a.pth", "b.PT", "c.onnx", "w", "e",
                                                          "neither")}
  assert kinds == {"a.pth": "torch", "b.PT": "torch", "c.onnx": "onnx", "w": "workdir",
                   "e": "exported", "neither": None}
  with pytest.raises(FileNotFoundError, match="does not exist: expected a training workdir"):
    model_io.load_model(tmp_path / "a.pth")
  with pytest.raises(FileNotFoundError, match="is not a model"):
    model_io.load_model(tmp_path)
  (tmp_path / "m.onnx").write_bytes(b"x")
  with pytest.raises(ValueError, match="is an ONNX file"):
    model_io.load_model(tmp_path / "m.onnx")


def test_exported_directory_round_trips(tmp_path):
  model = models.create_model("iresnet_tiny", embedding_dim=16)
  variables = random_variables(model, 32, seed=4)
  out = model_io.save_exported(tmp_path / "m", variables, arch="iresnet_tiny",
                               embedding_dim=16, image_size=32, source="test")
  assert json.loads((out / model_io.MODEL_FILE).read_text()) == {
      "arch": "iresnet_tiny", "embedding_dim": 16, "image_size": 32, "source": "test"}
  loaded, got, info = model_io.load_model(out)
  assert loaded.embedding_dim == 16 and info["image_size"] == 32
  jax.tree.map(np.testing.assert_array_equal, as_numpy(got), as_numpy(variables))
  with pytest.raises(FileExistsError, match="choose an empty --out"):
    model_io.save_exported(out, variables, arch="iresnet_tiny", embedding_dim=16)
  (out / model_io.VARIABLES_DIR / "_METADATA").write_text("garbage")
  with pytest.raises(ValueError, match="cannot be read"):
    model_io.load_model(out)


def test_workdir_gives_the_inference_variables_and_centres(tiny_records, tmp_path):
  state = as_numpy(train(tiny_config(data_dir=tiny_records, total_steps=1), tmp_path / "wd"))
  model, variables, info = model_io.load_model(tmp_path / "wd")
  assert info["step"] == 1 and info["arch"] == "iresnet_tiny"
  assert info["config"]["num_classes"] == 10
  np.testing.assert_array_equal(info["centres"], state.params["centres"])
  jax.tree.map(np.testing.assert_array_equal, variables["params"], state.params["backbone"])
  want = model_io.inference_variables(state)
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], want["batch_stats"])
  with pytest.raises(FileNotFoundError, match="holds no checkpoint yet"):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / model_io.CONFIG_FILE).write_text("{}")
    model_io.read_workdir(tmp_path / "empty")


class _Steps:
  """A stand-in for an orbax manager: its steps and folder."""

  def __init__(self, steps, directory="/ckpts"):
    self.steps, self.directory = steps, directory

  def all_steps(self):
    return list(self.steps)


def test_newest_readable_passes_over_unreadable_steps():
  def read(step):
    if step == 9:
      raise ValueError("OUT_OF_RANGE: Requested byte range [10, 20) is not valid") from (
          OSError("innermost: cut short"))
    if step == 7:
      raise KeyError("Unknown key: shape")
    return f"state {step}"

  step, got, damaged = model_io.newest_readable(_Steps([3, 9, 5, 7]), read)
  assert (step, got) == (5, "state 5")
  assert [s for s, _ in damaged] == [9, 7]
  assert damaged[0][1] == "innermost: cut short"  # the root cause's words
  with pytest.raises(ValueError, match=r"no readable checkpoint in /ckpts: step 9: .*step 7"):
    model_io.newest_readable(_Steps([9, 7]), read)
  with pytest.raises(FileNotFoundError, match="holds no checkpoint yet"):
    model_io.newest_readable(_Steps([]), read)

  def mismatch(step):
    raise model_io.CheckpointMismatch("another model")

  with pytest.raises(model_io.CheckpointMismatch):  # not damage: nothing falls back
    model_io.newest_readable(_Steps([4, 2]), mismatch)
