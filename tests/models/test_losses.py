"""The CR-FIQA and IG-FIQA loss functions against hand computations, under jit, with
gradients."""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crfiqa_jax.models import losses

COS = np.array([[0.5, 0.2, -0.1],
                [-0.3, 0.9, 0.4],
                [0.1, -0.2, -0.6]], np.float32)
LABELS = np.array([0, 1, 0])


def test_arcface_logits_hand_computed():
  got = jax.jit(lambda c, y: losses.arcface_logits(c, y, scale=64.0, margin=0.5))(COS, LABELS)
  want = 64.0 * COS.astype(np.float64)
  for i, y in enumerate(LABELS):
    want[i, y] = 64.0 * math.cos(math.acos(COS[i, y]) + 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_arcface_gradient_finite_at_cos_one():
  c = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
  g = jax.grad(lambda c: losses.arcface_logits(c, jnp.array([0, 0])).sum())(c)
  assert np.all(np.isfinite(g))


def test_certainty_ratio_paper_and_code_forms():
  cr, ccs, nn = losses.certainty_ratio(COS, LABELS, form="paper")
  np.testing.assert_allclose(ccs, [0.5, 0.9, 0.1])
  np.testing.assert_allclose(nn, [0.2, 0.4, -0.2])
  np.testing.assert_allclose(cr, [0.5 / 1.2, 0.9 / 1.4, 0.1 / 0.8], rtol=1e-6)
  cr_c, _, nn_c = losses.certainty_ratio(COS, LABELS, form="code")
  # Row 3: every other cosine is negative, so the -1e-12 written over the target wins.
  np.testing.assert_allclose(nn_c, [0.2, 0.4, -1e-12], rtol=1e-6)
  np.testing.assert_allclose(cr_c, [2.5, 2.25, 0.1 / -1e-12], rtol=1e-5)
  with pytest.raises(ValueError):
    losses.certainty_ratio(COS, LABELS, form="other")


def test_certainty_ratio_has_no_gradient():
  g = jax.grad(lambda c: sum(x.sum() for x in losses.certainty_ratio(c, LABELS)))(COS)
  np.testing.assert_array_equal(g, 0.0)


def test_smooth_l1_matches_pytorch_convention():
  pred = np.array([0.0, 0.2, 1.0, -0.7, 0.5], np.float32)
  target = np.zeros(5, np.float32)
  want = [0.0, 0.5 * 0.04 / 0.5, 1.0 - 0.25, 0.7 - 0.25, 0.5 - 0.25]  # |d| == β → linear
  np.testing.assert_allclose(losses.smooth_l1(pred, target, beta=0.5), want, rtol=1e-6)
  np.testing.assert_allclose(losses.smooth_l1(pred, target, beta=0.5),
                             optax.huber_loss(pred, target, delta=0.5) / 0.5, rtol=1e-6)


def _inputs():
  rng = np.random.default_rng(0)
  emb = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  q = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
  y = jnp.array([0, 3, 3, 1])
  return emb, q, w, y


def test_total_loss_values():
  emb, q, w, y = _inputs()
  out = jax.jit(losses.crfiqa_loss)(emb, q, w, y)
  x = np.asarray(emb) / np.linalg.norm(emb, axis=1, keepdims=True)
  wn = np.asarray(w) / np.linalg.norm(w, axis=0, keepdims=True)
  cos = x @ wn
  logits = 64 * cos
  idx = np.arange(4)
  logits[idx, y] = 64 * np.cos(np.arccos(cos[idx, y]) + 0.5)
  arc = np.mean(np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
                + logits.max(1) - logits[idx, y])
  others = np.where(np.eye(5, dtype=bool)[y], -np.inf, cos)
  cr = cos[idx, y] / (others.max(1) + 1 + 1e-9)
  d = np.abs(np.asarray(q) - cr)
  lcr = np.mean(np.where(d < 0.5, d * d, d - 0.25))
  np.testing.assert_allclose(out.loss_arc, arc, rtol=1e-5)
  np.testing.assert_allclose(out.loss_cr, lcr, rtol=1e-5)
  np.testing.assert_allclose(out.loss, arc + 10 * lcr, rtol=1e-5)
  ccs_out = losses.crfiqa_loss(emb, q, w, y, target="ccs")
  d2 = np.abs(np.asarray(q) - cos[idx, y])
  np.testing.assert_allclose(ccs_out.loss_cr, np.mean(np.where(d2 < 0.5, d2 * d2, d2 - 0.25)),
                             rtol=1e-5)


def test_cr_target_contributes_no_gradient_to_centres_or_embedding():
  emb, q, w, y = _inputs()
  full = jax.grad(lambda e, w: losses.crfiqa_loss(e, q, w, y).loss, argnums=(0, 1))(emb, w)
  arc = jax.grad(lambda e, w: losses.crfiqa_loss(e, q, w, y).loss_arc, argnums=(0, 1))(emb, w)
  np.testing.assert_allclose(full[0], arc[0], atol=1e-6)
  np.testing.assert_allclose(full[1], arc[1], atol=1e-6)
  # ...while the quality prediction does get the regression gradient.
  gq = jax.grad(lambda q: losses.crfiqa_loss(emb, q, w, y).loss)(q)
  assert np.abs(gq).sum() > 0


def test_padding_columns_are_ignored():
  emb, q, w, y = _inputs()
  pad = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32)
  a = losses.crfiqa_loss(emb, q, w, y)
  b = losses.crfiqa_loss(emb, q, jnp.concatenate([w, pad], 1), y, num_classes=5)
  for f in ("loss", "loss_arc", "loss_cr", "cr", "nnccs"):
    np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-6)
  g = jax.grad(lambda w: losses.crfiqa_loss(emb, q, w, y, num_classes=5).loss)(
      jnp.concatenate([w, pad], 1))
  assert np.all(np.isfinite(g)) and np.all(g[:, 5:] == 0)


def test_margin_fallback_only_changes_targets_beyond_pi_minus_m():
  cos = jnp.array([[-0.95, 0.1, 0.2], [0.3, 0.1, 0.2]])  # row 0: θ_y > π - m
  y = jnp.array([0, 0])
  q = jnp.zeros(2)
  w = jnp.eye(3)  # centres = unit axes, so cos θ = the embedding's normalised components
  emb = cos / jnp.linalg.norm(cos, axis=1, keepdims=True)
  plain = losses.crfiqa_loss(emb, q, w, y)
  guarded = losses.crfiqa_loss(emb, q, w, y, margin_fallback=True)
  c0 = float(emb[0, 0])
  assert c0 <= math.cos(math.pi - 0.5)
  # Row 0 target logit: 64·(c0 - 0.5·sin 0.5) instead of 64·cos(acos(c0) + 0.5).
  others = 64 * np.asarray(emb[0, 1:])
  want0 = np.log(np.exp(others).sum() + np.exp(64 * (c0 - 0.5 * math.sin(0.5)))) \
      - 64 * (c0 - 0.5 * math.sin(0.5))
  c1 = np.asarray(emb[1])
  t1 = 64 * math.cos(math.acos(c1[0]) + 0.5)
  want1 = np.log(np.exp(64 * c1[1:]).sum() + np.exp(t1)) - t1
  np.testing.assert_allclose(guarded.loss_arc, (want0 + want1) / 2, rtol=1e-5)
  assert float(plain.loss_arc) != pytest.approx(float(guarded.loss_arc))


# --- IG-FIQA's class weights and loss. ---

def test_update_hand_computed_with_repeated_labels():
  v = jnp.array([1.0, 0.5, 0.8, 1.0])          # class 3: a padding class
  ccs = jnp.array([0.2, 0.5, 0.6])
  labels = jnp.array([0, 2, 0])                 # class 0 twice: its mean CCS is 0.4
  update = jax.jit(lambda v, c, y: losses.igfiqa_update(v, c, y, alpha=0.9))
  got = update(v, ccs, labels)
  np.testing.assert_allclose(got, [0.9 * 1.0 + 0.1 * 0.4, 0.5, 0.9 * 0.8 + 0.1 * 0.5, 1.0],
                             rtol=1e-6)
  # The order of the repeated samples does not matter (a segment mean, not last-write-wins).
  perm = np.array([2, 1, 0])
  np.testing.assert_array_equal(update(v, ccs[perm], labels[perm]), got)
  # α as a traced scalar (it changes every epoch inside the jitted step).
  got_a = jax.jit(lambda a: losses.igfiqa_update(v, ccs, labels, alpha=a))(0.95)
  np.testing.assert_allclose(got_a[2], 0.95 * 0.8 + 0.05 * 0.5, rtol=1e-6)


def test_weights_hand_computed_and_padding_excluded():
  real = [0.9, 0.5, 0.7, 1.0]
  v = jnp.array(real + [1.0, 1.0])               # two trailing padding classes
  labels = jnp.array([0, 1, 2, 3, 2])
  mean, std = statistics.fmean(real), statistics.pstdev(real)  # population std
  want = [1.0 + min(0.0, max(-1.0, (real[y] - mean) / (std + 1e-6))) for y in labels]
  assert want[1] == 0.0 and 0.5 < want[2] < 0.7 and want[0] == 1.0  # clip at -1, and 0
  got = jax.jit(lambda v, y: losses.igfiqa_weights(v, y, num_classes=4))(v, labels)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Counting the padding classes would move mean and std: the weights differ.
  assert not np.allclose(losses.igfiqa_weights(v, labels), want, atol=1e-3)
  np.testing.assert_allclose(losses.igfiqa_weights(v[:4], labels), want, rtol=1e-6)
  # All classes equal: z = 0 → every weight 1 (the 1e-6 keeps it finite).
  np.testing.assert_array_equal(losses.igfiqa_weights(jnp.ones(5), labels), 1.0)


def test_igfiqa_loss_parts():
  rng = np.random.default_rng(0)
  emb, aug = (jnp.asarray(rng.normal(size=(4, 8)), jnp.float32) for _ in range(2))
  centres = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  q = jnp.asarray(rng.normal(size=4), jnp.float32)
  labels = jnp.array([0, 1, 1, 3])
  v = jnp.array([1.0, 0.2, 0.9, 0.8, 1.0, 1.0])

  def f(emb, aug, q, centres):
    return losses.igfiqa_loss(emb, aug, q, centres, labels, v, alpha=0.9, num_classes=5)

  out, new_v, w = f(emb, aug, q, centres)
  # Reference: CR target and CCS from the augmented embeddings, ArcFace from the clean.
  clean = losses.crfiqa_loss(emb, q, centres, labels, num_classes=5)
  on_aug = losses.crfiqa_loss(aug, q, centres, labels, num_classes=5)
  np.testing.assert_allclose(out.loss_arc, clean.loss_arc, rtol=1e-6)
  np.testing.assert_allclose(out.cr, on_aug.cr, rtol=1e-6)
  want_v = losses.igfiqa_update(v, on_aug.ccs, labels, alpha=0.9)
  np.testing.assert_allclose(new_v, want_v, rtol=1e-6)
  np.testing.assert_allclose(w, losses.igfiqa_weights(want_v, labels, num_classes=5))
  sl1 = losses.smooth_l1(q, on_aug.cr)
  np.testing.assert_allclose(out.loss, clean.loss_arc + 10 * np.mean(w * sl1), rtol=1e-5)
  # Gradients: none reaches the centres or the embeddings through the augmented branch.
  g_emb, g_aug, g_q, g_c = jax.grad(lambda *a: f(*a)[0].loss, argnums=(0, 1, 2, 3))(
      emb, aug, q, centres)
  np.testing.assert_array_equal(g_aug, 0.0)
  g_c_arc = jax.grad(lambda c: losses.crfiqa_loss(emb, q, c, labels, num_classes=5,
                                                  lambda_cr=0.0).loss)(centres)
  np.testing.assert_allclose(g_c, g_c_arc, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(g_q)).max() > 0
