import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crfiqa_jax import models

# Trainable parameters of the released PyTorch models (backbone + quality head).
RELEASED_COUNTS = {"iresnet18": 24_026_113, "iresnet34": 34_139_841,
                   "iresnet50": 43_591_361, "iresnet100": 65_156_673}


@pytest.mark.parametrize("arch", sorted(RELEASED_COUNTS))
def test_parameter_count_matches_released_models(arch):
  model = models.create_model(arch)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))
  n = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert n == RELEASED_COUNTS[arch]


def test_layout_and_outputs():
  model = models.create_model("iresnet_tiny")
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  params = variables["params"]
  # Stage-first blocks carry the projection shortcut, later ones do not.
  assert "downsample_conv" in params["layer1_0"] and "downsample_bn" in params["layer1_0"]
  assert params["conv1"]["kernel"].shape == (3, 3, 3, 8)
  assert params["fc"]["kernel"].shape == (7 * 7 * 64, 64)  # 112 → 7 after four stride-2 stages
  assert params["qs"]["kernel"].shape == (64, 1)
  assert float(params["layer1_0"]["prelu"]["alpha"][0]) == pytest.approx(0.25)
  emb, q = model.apply(variables, x, train=False)
  assert emb.shape == (2, 64) and q.shape == (2,)
  # Quality is the linear head applied to the (un-normalised) embedding.
  np.testing.assert_allclose(q, emb @ params["qs"]["kernel"][:, 0] + params["qs"]["bias"][0],
                             rtol=1e-5, atol=1e-5)


def test_train_mode_uses_dropout_and_batch_stats():
  model = models.create_model("iresnet_tiny")
  x = jnp.ones((4, 32, 32, 3)) * 0.3
  variables = model.init(jax.random.key(0), x)
  (e1, _), upd = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                             mutable=["batch_stats"])
  (e2, _), _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                           mutable=["batch_stats"])
  assert not np.allclose(e1, e2)  # dropout draws differ
  old = variables["batch_stats"]["bn1"]["mean"]
  new = upd["batch_stats"]["bn1"]["mean"]
  assert not np.allclose(old, new)


def test_stride2_padding_is_symmetric():
  # A 3×3 stride-2 conv with pad (1,1) on 4×4 input reads rows -1..1 and 1..3 (PyTorch);
  # 'SAME' would read 0..2 and 2..4. Check the first output sees the zero border.
  import flax.linen as nn
  conv = nn.Conv(1, (3, 3), strides=2, padding=models.torch_padding(3), use_bias=False)
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  k = jnp.ones((3, 3, 1, 1))
  y = conv.apply({"params": {"kernel": k}}, x)[0, :, :, 0]
  xp = np.pad(np.arange(16.0).reshape(4, 4), 1)
  want = np.array([[xp[r:r + 3, c:c + 3].sum() for c in (0, 2)] for r in (0, 2)])
  np.testing.assert_allclose(y, want)


def test_bad_input_shape():
  model = models.create_model("iresnet_tiny")
  with pytest.raises(ValueError, match="NHWC"):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
  with pytest.raises(ValueError, match="Unknown model"):
    models.create_model("resnet50")


def test_fc_and_qs_start_from_pytorch_default_init():
  """torch.nn.Linear's default, U(±1/√fan_in) for weight AND bias, so training from scratch
  starts as the released code does."""
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
