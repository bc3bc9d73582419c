"""`Scorer`: the Python API on in-memory images, equal to the model, features as the
released evaluation."""

import numpy as np
import pytest

from crfiqa_jax.serve import scorer


@pytest.fixture(scope="module")
def exported(tiny_model):
  return tiny_model


def test_python_api_on_arrays(exported):
  out, model, variables = exported
  s = scorer.Scorer.from_checkpoint(out, batch_size=3, precision="fp32")
  imgs = np.random.default_rng(1).integers(0, 255, (5, 112, 112, 3), dtype=np.uint8)
  q = s(imgs)
  _, want = model.apply(variables, (imgs.astype(np.float32) - 127.5) / 127.5, train=False)
  np.testing.assert_allclose(q, want, rtol=1e-5, atol=1e-5)
  feats, _ = s.embed(imgs)
  assert feats.shape == (5, 128)
  np.testing.assert_allclose(np.linalg.norm(feats[:, :64], axis=1), 1, rtol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    s(imgs.astype(np.float32))
  with pytest.raises(ValueError, match="aligned to 112x112, got 100x100"):
    s(imgs[:, :100, :100])  # the network would run on it and give a number
