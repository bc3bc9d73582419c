"""Warm starts: a backbone from a trained model, and the "on top" ablation's class centres
(the checkpoint's own, the class means) against hand computations in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import models, sharding
from crfiqa_jax.data.codecs import decode_image
from crfiqa_jax.data.records import RecordSource
from crfiqa_jax.serve import model_io
from crfiqa_jax.train import warmstart
from crfiqa_jax.train.trainer import Trainer, train
from helpers import as_numpy, batch as _batch, tiny_config as _config


def test_init_checkpoint_loads_backbone_and_on_top_trains_only_qs(tiny_records, tmp_path):
  model = models.create_model("iresnet_tiny", embedding_dim=32)
  variables = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  model_io.save_exported(tmp_path / "init", variables, arch="iresnet_tiny", embedding_dim=32,
                         image_size=32)
  cfg = _config(data_dir=tiny_records, total_steps=2, init_checkpoint=tmp_path / "init",
                trainable="qs")
  state = as_numpy(train(cfg, tmp_path / "wd"))
  before = as_numpy(variables["params"])
  # "On top": every backbone weight is exactly the loaded one, only the head moved.
  for name in ("conv1", "fc", "layer2_0"):
    jax.tree.map(np.testing.assert_array_equal, state.params["backbone"][name], before[name])
  assert not np.allclose(state.params["backbone"]["qs"]["kernel"], before["qs"]["kernel"])
  with pytest.raises(ValueError, match="does not fit|wants"):
    train(_config(data_dir=tiny_records, total_steps=1, embedding_dim=16,
                        init_checkpoint=tmp_path / "init"), tmp_path / "wd2")


def _eval_cr(variables, images, labels, centres, embedding_dim=32):
  """Paper-form CR of eval-mode embeddings against `centres` [D, C], in numpy."""
  model = models.create_model("iresnet_tiny", embedding_dim=embedding_dim)
  emb, _ = model.apply(variables, (images.astype(np.float32) - 127.5) / 127.5, train=False)
  x = np.asarray(emb, np.float64)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  w = np.asarray(centres, np.float64)
  w = w / np.linalg.norm(w, axis=0, keepdims=True)
  cos = x @ w
  rows = np.arange(len(labels))
  ccs = cos[rows, labels]
  cos[rows, labels] = -np.inf
  return ccs / (cos.max(axis=1) + 1 + 1e-9), x


def test_on_top_regresses_cr_against_the_pretrained_centres(tiny_records, tmp_path):
  pre = as_numpy(train(_config(data_dir=tiny_records, total_steps=2),
                                   tmp_path / "pre"))
  cfg = _config(data_dir=tiny_records, init_checkpoint=tmp_path / "pre", trainable="qs",
                lr=0.01)
  trainer = Trainer(cfg, num_classes=10, num_examples=160)
  fresh = as_numpy(trainer.init())
  state = warmstart.load_init(trainer.init(), cfg, trainer)
  np.testing.assert_array_equal(state.params["centres"], pre.params["centres"])
  batch = _batch(5)
  new, m = trainer.step_fn(state, sharding.global_batch(batch, trainer.mesh))
  frozen = {"params": pre.params["backbone"], "batch_stats": pre.batch_stats}
  cr, _ = _eval_cr(frozen, batch["image"], batch["label"], pre.params["centres"])
  # The head's target: inference-mode embeddings against the pretrained model's centres.
  np.testing.assert_allclose(float(m["cr"]), cr.mean(), rtol=1e-4)
  cr_random, _ = _eval_cr(frozen, batch["image"], batch["label"], fresh.params["centres"])
  assert abs(cr_random.mean() - cr.mean()) > 1e-2  # random centres would fail the check
  new = as_numpy(new)
  np.testing.assert_array_equal(new.params["centres"], pre.params["centres"])
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats, pre.batch_stats)
  np.testing.assert_array_equal(new.params["backbone"]["fc"]["kernel"],
                                pre.params["backbone"]["fc"]["kernel"])
  assert not np.allclose(new.params["backbone"]["qs"]["kernel"],
                         pre.params["backbone"]["qs"]["kernel"])
  with pytest.raises(ValueError, match="init_checkpoint"):
    Trainer(_config(trainable="qs"), num_classes=10, num_examples=160)


def test_on_top_without_centres_uses_class_means(tiny_records, tmp_path):
  """An exported model has no centres: each becomes its class's mean normalised
  inference-mode embedding over the training set (all 160 images: 10 full batches)."""
  model = models.create_model("iresnet_tiny", embedding_dim=32)
  variables = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  model_io.save_exported(tmp_path / "init", variables, arch="iresnet_tiny", embedding_dim=32,
                         image_size=32)
  cfg = _config(data_dir=tiny_records, init_checkpoint=tmp_path / "init", trainable="qs")
  trainer = Trainer(cfg, num_classes=10, num_examples=160)
  state = as_numpy(warmstart.load_init(trainer.init(), cfg, trainer))
  src = RecordSource(tiny_records)
  recs = [src[i] for i in range(len(src))]
  images = np.stack([decode_image(r["image"]) for r in recs])
  labels = np.array([r["label"] for r in recs])
  _, x = _eval_cr(variables, images, labels, np.ones((32, 10)))
  want = np.stack([x[labels == c].mean(0) for c in range(10)], axis=1)
  np.testing.assert_allclose(state.params["centres"], want, rtol=1e-4, atol=1e-5)
