"""The main job's checks before step 1: a mistake costs seconds, not a training run."""

import numpy as np
import pytest

from crfiqa_jax import data
from crfiqa_jax.train import job
from crfiqa_jax.train.trainer import train
from helpers import tiny_config


def _cfg(data_dir, **kw):
  return tiny_config(data_dir=data_dir, shard_centres="true", **kw)


def test_checks_fail_before_the_first_step(tiny_records, tmp_path):
  cfg = _cfg(tiny_records, total_steps=1, eval_data_dir=str(tiny_records))
  with pytest.raises(ValueError, match="no 'test' split|lacks per-image 'severity'"):
    job.preflight(cfg, tmp_path / "wd")
  assert not (tmp_path / "wd").exists()  # nothing was trained
  with pytest.raises(FileNotFoundError, match="init_checkpoint"):
    job.preflight(_cfg(tiny_records, init_checkpoint="/nope"), tmp_path / "wd")
  train(_cfg(tiny_records, total_steps=1), tmp_path / "wd")
  with pytest.raises(ValueError, match=r"embedding_dim=32.*--config.embedding_dim=32"):
    job.preflight(_cfg(tiny_records, embedding_dim=16), tmp_path / "wd")


def test_eval_crops_smaller_than_the_model_stop_before_step_1(tiny_records, tmp_path):
  """A 24-pixel held-out split for a 32-pixel model stops in preflight, naming the key (it
  used to fail only after training, when the report read its first image)."""
  def gen():
    for i in range(4):
      yield {"image": data.encode_jpeg(np.full((24, 24, 3), 50 * i, np.uint8)), "label": i // 2}

  small = tmp_path / "small"
  data.write_records(small, {"test": gen}, num_classes=2,
                     metadata={"test_pairs": [[0, 1, 1], [0, 2, 0]]}, num_shards=1,
                     progress=False)
  with pytest.raises(ValueError, match=r"--config.eval_data_dir=.*\(24, 24, 3\).*image_size"):
    job.preflight(_cfg(tiny_records, eval_data_dir=str(small)), tmp_path / "wd")
  assert not (tmp_path / "wd").exists()
