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


def test_a_held_out_split_in_data_dir_is_used_when_eval_data_dir_is_empty(tiny_records,
                                                                          tmp_path, caplog):
  """`prepare celeba ROOT DATA` then `main --config.data_dir=DATA`: DATA's 'test' split
  (pairs, or every image's severity) serves the report, said in one log line; data without
  one, a given eval_data_dir and "none" are left as they are."""
  def gen(meta):
    def g():
      for i in range(4):
        yield {"image": data.encode_jpeg(np.full((32, 32, 3), 50 * i, np.uint8)),
               "label": i // 2, "metadata": meta(i)}
    return g

  paired, graded, bare = tmp_path / "paired", tmp_path / "graded", tmp_path / "bare"
  plain = lambda i: {}  # noqa: E731
  data.write_records(paired, {"train": gen(plain), "test": gen(plain)}, num_classes=2,
                     metadata={"test_pairs": [[0, 1, 1], [0, 2, 0]]}, num_shards=1,
                     progress=False)
  data.write_records(graded, {"train": gen(plain), "test": gen(lambda i: {"severity": i / 4})},
                     num_classes=2, num_shards=1, progress=False)
  data.write_records(bare, {"train": gen(plain), "test": gen(plain)}, num_classes=2,
                     num_shards=1, progress=False)
  for d, want in ((paired, str(paired)), (graded, str(graded)), (bare, ""),
                  (tiny_records, "")):
    cfg = _cfg(d)
    caplog.clear()
    with caplog.at_level("INFO", logger="crfiqa_jax"):
      job.default_eval_data(cfg)
    assert cfg.eval_data_dir == want, d
    said = [r.getMessage() for r in caplog.records if "eval_data_dir" in r.getMessage()]
    assert len(said) == (1 if want else 0), said
    if want:
      assert str(d) in said[0] and "--config.eval_data_dir=none" in said[0]
  cfg = _cfg(paired, eval_data_dir="NONE")
  job.default_eval_data(cfg)
  assert cfg.eval_data_dir == ""
  cfg = _cfg(paired, eval_data_dir=str(graded))
  job.default_eval_data(cfg)
  assert cfg.eval_data_dir == str(graded)
