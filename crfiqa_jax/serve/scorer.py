"""`Scorer`: face image quality (and FR features) of in-memory images with one model.

    scorer = Scorer.from_checkpoint("runs/crfiqa_s")      # any model path, any engine
    quality = scorer(images)                              # uint8 [N, 112, 112, 3] → [N]
    features, quality = scorer.embed(images)              # [N, 2D] as the released eval

Images must be aligned faces (crfiqa_jax.data.faces aligns photos); files and folders go
through `python -m crfiqa_jax.score` or crfiqa_jax.serve.inference.extract.
"""

from __future__ import annotations

import numpy as np

from crfiqa_jax.data import sources
from crfiqa_jax.serve import engines, inference


class Scorer:
  """Quality (and FR features) of in-memory images with one model, for notebooks and tests.

  `scorer(images uint8 [N, H, W, 3])` → quality [N]; `scorer.embed(images)` → (features
  [N, 2D] as the released evaluation, quality [N]).
  """

  def __init__(self, predictor, *, batch_size: int = 64):
    self.predictor = predictor
    self.batch_size = batch_size
    self.image_size = predictor.image_size

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self.embed(images, features="none")[1]

  def embed(self, images: np.ndarray, features: str = "concat"):
    feats, quality, _ = inference.extract(
        self.predictor, sources.array_source(images), features=features,
        batch_size=self.batch_size, progress=False, gather=False)
    return feats, quality

  @classmethod
  def from_checkpoint(cls, path, arch: str | None = None, *, batch_size: int = 64,
                      engine: str = "auto", precision: str = "auto") -> "Scorer":
    """For any model path (crfiqa_jax.serve.model_io), on `engine` in `precision`
    (crfiqa_jax.serve.engines: "auto" is this host's fastest that keeps the ranking of the
    quality; use precision="fp32" where `embed`'s features serve for face recognition)."""
    return cls(engines.load_predictor(path, arch, engine, precision), batch_size=batch_size)
