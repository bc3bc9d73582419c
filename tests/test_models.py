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
  conv = nn.Conv(1, (3, 3), strides=2, padding=models._PAD1, use_bias=False)
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


def _random_bn_variables(model, x, seed=1):
  """Initialised variables with random BN statistics and affine parameters (fresh ones are
  mean 0, var 1, γ 1, β 0, for which folding is trivially right)."""
  rng = np.random.default_rng(seed)

  def rnd(path, a):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return jnp.asarray(rng.uniform(0.3, 3.0, a.shape), jnp.float32)
    if "'mean'" in name or ("bn" in name or "features" in name) and "'bias'" in name:
      return jnp.asarray(rng.normal(0, 0.5, a.shape), jnp.float32)
    if "'scale'" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32)
    return a
  return jax.tree_util.tree_map_with_path(rnd, dict(model.init(jax.random.key(0), x)))


def test_folded_batchnorm_computes_the_same_function():
  model = models.create_model("iresnet_tiny", dropout=0.0)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
  variables = _random_bn_variables(model, x)
  emb, quality = model.apply(variables, x)
  folded, fvars = models.fold_batchnorm(model, variables)
  assert folded.folded
  # What is left: each block's first BN only; the convs and the FC gained a bias.
  assert set(fvars["batch_stats"]) == {"layer1_0", "layer2_0", "layer3_0", "layer4_0"}
  assert all(set(s) == {"bn1"} for s in fvars["batch_stats"].values())
  assert "bias" in fvars["params"]["layer2_0"]["conv2"] and "bn2" not in fvars["params"]
  f_emb, f_quality = folded.apply(fvars, x)
  assert f_emb.dtype == jnp.float32
  scale = float(jnp.abs(emb).max())
  assert scale > 1.0  # the random statistics matter
  np.testing.assert_allclose(f_emb, emb, atol=2e-5 * scale)
  np.testing.assert_allclose(f_quality, quality, atol=2e-5 * float(jnp.abs(quality).max()) + 1e-6)
  # Ignoring the statistics (folding γ, β only) would be visibly wrong: the test can fail.
  wrong = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.zeros_like(a) if "'mean'" in jax.tree_util.keystr(p) else a, variables)
  _, wrong_fvars = models.fold_batchnorm(model, wrong)
  assert float(jnp.abs(folded.apply(wrong_fvars, x)[0] - emb).max()) > 1e-2 * scale
  with pytest.raises(ValueError, match="inference only"):
    folded.apply(fvars, x, train=True)
  with pytest.raises(ValueError, match="already folded"):
    models.fold_batchnorm(folded, fvars)


def test_predictor_with_folded_batchnorm_scores_the_same():
  from crfiqa_jax import inference
  model = models.create_model("iresnet_tiny", dropout=0.0)
  imgs = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  variables = _random_bn_variables(model, jnp.zeros((1, 32, 32, 3)))
  folded = inference.FlaxPredictor(model, variables, image_size=32, fold_bn=True)
  kept = inference.FlaxPredictor(model, variables, image_size=32)
  assert folded.model.folded and not kept.model.folded
  e0, q0 = kept(imgs)
  e1, q1 = folded(imgs)
  np.testing.assert_allclose(e1, e0, atol=2e-5 * float(jnp.abs(e0).max()))
  np.testing.assert_allclose(q1, q0, atol=2e-5 * float(jnp.abs(q0).max()) + 1e-6)
