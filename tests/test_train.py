import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import main, sharding, train

TINY = {"model": "iresnet_tiny", "embedding_dim": "32", "image_size": "32", "batch_size": "16",
        "log_every": "1", "checkpoint_every": "3", "data_workers": "0", "lr": "0.2"}


def _config(**kw):
  overrides = dict(TINY, **{k: str(v) for k, v in kw.items()})
  return main.load_config("base", overrides)


def _batch(seed=0, n=16, size=32, classes=10):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
          "label": (np.arange(n) % classes).astype(np.int32)}


def _one_step(n_devices, shard_centres):
  config = _config(shard_centres=shard_centres)
  mesh = sharding.make_mesh(jax.devices()[:n_devices])
  trainer = train.Trainer(config, num_classes=10, num_examples=160, mesh=mesh)
  state = trainer.init()
  state, metrics = trainer.step_fn(state, sharding.global_batch(_batch(), mesh))
  state, metrics = trainer.step_fn(state, sharding.global_batch(_batch(1), mesh))
  return train.as_numpy(state), train.as_numpy(metrics), trainer


@pytest.mark.parametrize("shard_centres", [False, True])
def test_eight_devices_match_one(shard_centres):
  s1, m1, _ = _one_step(1, shard_centres)
  s8, m8, t8 = _one_step(8, shard_centres)
  if shard_centres:
    assert t8.num_classes_padded == 16 and s8.params["centres"].shape == (32, 16)
  for k in ("loss", "loss_arc", "loss_cr", "cr", "grad_norm"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, err_msg=k)
  c1, c8 = s1.params["centres"][:, :10], s8.params["centres"][:, :10]
  np.testing.assert_allclose(c8, c1, rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               s8.params["backbone"], s1.params["backbone"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               s8.batch_stats, s1.batch_stats)


def test_sharded_centres_live_split_over_devices():
  config = _config(shard_centres=True)
  trainer = train.Trainer(config, num_classes=10, num_examples=160)
  state = trainer.init()
  centres = state.params["centres"]
  assert centres.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  assert {s.data.shape for s in centres.addressable_shards} == {(32, 2)}


@pytest.mark.parametrize("method", ["crfiqa", "igfiqa"])
def test_sharded_centres_are_never_gathered_whole(method):
  """Class-sharded centres stay split in the compiled step: no all-gather produces the
  whole class axis, and the step's temporaries stay far below one copy of all the centres
  (XLA gathered them to every device for the embeddings' gradient before the cosines'
  layout was pinned, losses.cosine_matrix)."""
  import re
  n_classes = 200_000                    # 32 × 200,000 fp32 centres = 25.6 MB
  # margin_fallback and no dropout: the settings under which XLA:CPU gathered them.
  trainer = train.Trainer(_config(shard_centres=True, method=method, margin_fallback=True,
                                  dropout=0.0), num_classes=n_classes,
                          num_examples=160)
  c = trainer.num_classes_padded
  batch_sh = sharding.batch_sharding(trainer.mesh)
  batch = {"image": jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.uint8, sharding=batch_sh),
           "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=batch_sh)}
  compiled = trainer.step_fn.lower(trainer.abstract_target(), batch).compile()
  gathered = [m.group(1) for m in re.finditer(r"= \w+\[([\d,]*)\][^=]*? all-gather\(",
                                               compiled.as_text())]
  assert gathered, "expected the (small) embeddings to be gathered"
  assert not [g for g in gathered if str(c) in g.split(",")], gathered
  centres_bytes = 32 * c * 4
  assert compiled.memory_analysis().temp_size_in_bytes < centres_bytes  # a gathered copy ≥ it


def test_step_traced_once_and_resume_is_exact(tiny_records, tmp_path):
  before = train.TRACE_COUNT["train_step"]
  straight = train.train(_config(data_dir=tiny_records, total_steps=6), tmp_path / "a")
  assert train.TRACE_COUNT["train_step"] - before == 1  # one trace over six steps
  # "Kill" after 3 steps, then rerun the same command with a longer horizon.
  part = train.train(_config(data_dir=tiny_records, total_steps=3), tmp_path / "b")
  assert int(part.step) == 3
  resumed = train.train(_config(data_dir=tiny_records, total_steps=6), tmp_path / "b")
  assert int(resumed.step) == 6
  a, b = train.as_numpy(straight), train.as_numpy(resumed)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)
  lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 6  # steps 1-3, then 4-6 after the resume


def test_nonfinite_loss_names_the_step(tiny_records, tmp_path):
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
    train.train(_config(data_dir=tiny_records, total_steps=20, lr=1e30, clip_norm=0.0),
                tmp_path)


def test_clear_errors(tiny_records, tmp_path):
  with pytest.raises(main.ConfigError, match="Unknown config key 'batchsize'.*batch_size"):
    _config(batchsize=8)
  with pytest.raises(ValueError, match="data_dir is empty"):
    train.train(_config(), tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    train.train(_config(data_dir=tmp_path / "missing"), tmp_path)
  with pytest.raises(ValueError, match="not divisible by the number of devices"):
    train.train(_config(data_dir=tiny_records, batch_size=12), tmp_path)
  with pytest.raises(main.ConfigError, match="No config 'nope'"):
    main.load_config("nope")


def test_init_checkpoint_loads_backbone_and_on_top_trains_only_qs(tiny_records, tmp_path):
  import jax.numpy as jnp

  from crfiqa_jax import convert, models
  model = models.create_model("iresnet_tiny", embedding_dim=32)
  variables = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  convert.save_inference(tmp_path / "init", variables, arch="iresnet_tiny", embedding_dim=32,
                         image_size=32)
  cfg = _config(data_dir=tiny_records, total_steps=2, init_checkpoint=tmp_path / "init",
                trainable="qs")
  state = train.as_numpy(train.train(cfg, tmp_path / "wd"))
  before = train.as_numpy(variables["params"])
  # "On top": every backbone weight is exactly the loaded one, only the head moved.
  for name in ("conv1", "fc", "layer2_0"):
    jax.tree.map(np.testing.assert_array_equal, state.params["backbone"][name], before[name])
  assert not np.allclose(state.params["backbone"]["qs"]["kernel"], before["qs"]["kernel"])
  with pytest.raises(ValueError, match="does not fit|wants"):
    train.train(_config(data_dir=tiny_records, total_steps=1, embedding_dim=16,
                        init_checkpoint=tmp_path / "init"), tmp_path / "wd2")


def test_fc_and_qs_start_from_pytorch_default_init():
  """torch.nn.Linear's default, U(±1/√fan_in) for weight AND bias, so training from scratch
  starts as the released code does."""
  import jax.numpy as jnp

  from crfiqa_jax import models
  model = models.create_model("iresnet_tiny", embedding_dim=32)
  p = model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))["params"]
  for name, fan_in in (("fc", 2 * 2 * 64), ("qs", 32)):  # 32 px → 2×2×64 after 4 stages
    bound = fan_in ** -0.5
    for leaf in ("kernel", "bias"):
      x = np.asarray(p[name][leaf])
      assert np.abs(x).max() <= bound and np.abs(x).max() > 0, (name, leaf)
  k = np.asarray(p["fc"]["kernel"])  # 8,192 draws: uniform std = bound/√3, mean 0
  assert abs(k.std() / (256 ** -0.5 / 3 ** 0.5) - 1) < 0.05 and abs(k.mean()) < 2e-3
  assert np.abs(np.asarray(p["fc"]["bias"])).max() > 0.5 * 256 ** -0.5  # not zeros


def _eval_cr(variables, images, labels, centres, embedding_dim=32):
  """Paper-form CR of eval-mode embeddings against `centres` [D, C], in numpy."""
  from crfiqa_jax import models
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
  from crfiqa_jax import warmstart
  pre = train.as_numpy(train.train(_config(data_dir=tiny_records, total_steps=2),
                                   tmp_path / "pre"))
  cfg = _config(data_dir=tiny_records, init_checkpoint=tmp_path / "pre", trainable="qs",
                lr=0.01)
  trainer = train.Trainer(cfg, num_classes=10, num_examples=160)
  fresh = train.as_numpy(trainer.init())
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
  new = train.as_numpy(new)
  np.testing.assert_array_equal(new.params["centres"], pre.params["centres"])
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats, pre.batch_stats)
  np.testing.assert_array_equal(new.params["backbone"]["fc"]["kernel"],
                                pre.params["backbone"]["fc"]["kernel"])
  assert not np.allclose(new.params["backbone"]["qs"]["kernel"],
                         pre.params["backbone"]["qs"]["kernel"])
  with pytest.raises(ValueError, match="init_checkpoint"):
    train.Trainer(_config(trainable="qs"), num_classes=10, num_examples=160)


def test_on_top_without_centres_uses_class_means(tiny_records, tmp_path):
  """An exported model has no centres: each becomes its class's mean normalised
  inference-mode embedding over the training set (all 160 images: 10 full batches)."""
  import jax.numpy as jnp

  from crfiqa_jax import convert, models, warmstart
  from crfiqa_jax.data.records import RecordSource, decode_image
  model = models.create_model("iresnet_tiny", embedding_dim=32)
  variables = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  convert.save_inference(tmp_path / "init", variables, arch="iresnet_tiny", embedding_dim=32,
                         image_size=32)
  cfg = _config(data_dir=tiny_records, init_checkpoint=tmp_path / "init", trainable="qs")
  trainer = train.Trainer(cfg, num_classes=10, num_examples=160)
  state = train.as_numpy(warmstart.load_init(trainer.init(), cfg, trainer))
  src = RecordSource(tiny_records)
  recs = [src[i] for i in range(len(src))]
  images = np.stack([decode_image(r["image"]) for r in recs])
  labels = np.array([r["label"] for r in recs])
  _, x = _eval_cr(variables, images, labels, np.ones((32, 10)))
  want = np.stack([x[labels == c].mean(0) for c in range(10)], axis=1)
  np.testing.assert_allclose(state.params["centres"], want, rtol=1e-4, atol=1e-5)


def test_augment_batch_degrades_the_training_batch_itself():
  """augment_batch with grey always and nothing else: the step equals a plain step on the
  batch greyed by hand (Y = 0.299 R + 0.587 G + 0.114 B); off, the batch is untouched."""
  grey_only = {"augment_batch": "true", "ig_augment.p_gray": "1.0",
               "ig_augment.p_rescale": "0.0", "ig_augment.p_erase": "0.0",
               "ig_augment.p_jitter": "0.0"}
  batch = _batch(3)
  y = batch["image"].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  by_hand = dict(batch, image=np.repeat(y[..., None], 3, -1).astype(np.float32))
  results = []
  for cfg, b in ((grey_only, batch), ({}, by_hand), ({}, batch)):
    trainer = train.Trainer(_config(**cfg), num_classes=10, num_examples=160)
    _, m = trainer.step_fn(trainer.init(), sharding.global_batch(b, trainer.mesh))
    results.append(train.as_numpy(m))
  for k in ("loss", "cr", "grad_norm"):
    np.testing.assert_allclose(results[0][k], results[1][k], rtol=1e-4, err_msg=k)
  assert abs(results[0]["loss"] - results[2]["loss"]) > 1e-4
