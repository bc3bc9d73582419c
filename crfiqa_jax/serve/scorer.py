"""`Scorer`: face image quality (and FR features) of in-memory images with one model.

    scorer = Scorer.from_checkpoint("cr-fiqa-s")          # any model path or released name
    quality = scorer(images)                              # uint8 [N, 112, 112, 3] → [N]
    features, quality = scorer.embed(images)              # [N, 2D] as the released eval

Images must be aligned faces (crfiqa_jax.data.faces aligns photos; `score_photos` in
crfiqa_jax.serve.photos takes photo files); folders go through `python -m crfiqa_jax.score`.
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
    self.image_size: int = predictor.image_size

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] RGB aligned faces (S = image_size) → float32 quality [N], the raw
    CR-FIQA output (higher = more useful for recognition)."""
    return self.embed(images, features="none")[1]

  def embed(self, images: np.ndarray, features: str = "concat"
            ) -> tuple[np.ndarray | None, np.ndarray]:
    """(features, quality [N]) of uint8 [N, S, S, 3] faces. features "concat": [N, 2D], the
    L2-normalised embeddings of each face and its mirror image side by side, as the
    released evaluation compares faces; "raw": [N, D]; "none": None."""
    images = np.asarray(images)
    s = self.image_size
    if images.ndim == 4 and images.shape[1:3] != (s, s):
      raise ValueError(f"expected faces aligned to {s}x{s}, got {images.shape[2]}x"
                       f"{images.shape[1]}: align photos first (score_photos) or resize")
    feats, quality, _ = inference.extract(
        self.predictor, sources.array_source(images), features=features,
        batch_size=self.batch_size, progress=False, gather=False)
    return feats, quality

  @classmethod
  def from_checkpoint(cls, path, arch: str | None = None, *, batch_size: int = 64,
                      engine: str = "auto", precision: str = "auto") -> "Scorer":
    """For any model path (crfiqa_jax.serve.model_io) or a released model's name
    ("cr-fiqa-s", "cr-fiqa-l"; docs/models.md), on `engine` in `precision`
    (crfiqa_jax.serve.engines: "auto" is this host's fastest that keeps the ranking of the
    quality; use precision="fp32" where `embed`'s features serve for face recognition)."""
    return cls(engines.load_predictor(path, arch, engine, precision), batch_size=batch_size)
