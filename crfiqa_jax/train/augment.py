"""On-device image degradations for IG-FIQA's augmented copy (the IG-FIQA paper).

IG-FIQA feeds its quality regressor an augmented copy of each batch so that it sees
low-quality faces the training set lacks: rescaling, random erasing, colour jitter (the
paper) and grayscale (the paper's figure). The paper gives no parameters; ours are below
(`AugmentParams`) and each degradation is drawn independently per image with its own
probability. Everything is a pure function of (images, rng) with static shapes, so it runs
inside the jitted train step, sharded with the batch, and a resumed run draws the same
augmentations (the key is folded from the step).

Images are float32 [B, H, W, 3] on the 0-255 scale in and out (uint8 input is accepted);
`models.normalize` maps them to [-1, 1] afterwards.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 601, as torchvision; numpy, so that importing this module starts no jax backend
# (jax.distributed.initialize must come first on several processes).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Probabilities and ranges of the degradations (our choice: the paper gives none)."""

  p_rescale: float = 0.5
  min_scale: float = 0.2          # downscale to [min_scale, 1) of the side, then back up
  p_erase: float = 0.5
  erase_area: tuple[float, float] = (0.02, 0.33)   # torchvision RandomErasing's defaults
  erase_aspect: tuple[float, float] = (0.3, 3.3)
  p_jitter: float = 0.5
  jitter: float = 0.4             # brightness, contrast, saturation factors in [1±jitter]
  p_gray: float = 0.2


def rescale(images: jax.Array, scale: jax.Array) -> jax.Array:
  """Downscale-upscale: image i [H, W, C] is shrunk by `scale[i]` ∈ (0, 1] with an
  antialiased (triangle) filter and stretched back bilinearly (half-pixel centres, edges
  clamped). Static shapes: the small image fills the top-left ⌊s·H⌋×⌊s·W⌋ pixels of an
  H×W canvas between the two resamplings; only those fully covered pixels are read back."""
  def upsample_axis(x, s, n, axis):
    size = x.shape[axis]
    p = jnp.clip((jnp.arange(size, dtype=jnp.float32) + 0.5) * s - 0.5, 0.0, n - 1.0)
    i0 = jnp.floor(p).astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, n - 1)
    t = jnp.expand_dims(p - i0, [d for d in range(x.ndim) if d != axis])
    return jnp.take(x, i0, axis=axis) * (1 - t) + jnp.take(x, i1, axis=axis) * t

  def one(img, s):
    small = jax.image.scale_and_translate(img, img.shape, (0, 1), jnp.stack([s, s]),
                                          jnp.zeros(2), "linear", antialias=True)
    n_h = jnp.maximum(jnp.floor(s * img.shape[0]), 1.0).astype(jnp.int32)
    n_w = jnp.maximum(jnp.floor(s * img.shape[1]), 1.0).astype(jnp.int32)
    return upsample_axis(upsample_axis(small, s, n_h, 0), s, n_w, 1)

  return jax.vmap(one)(images, scale)


def erase(images: jax.Array, box: jax.Array) -> jax.Array:
  """Sets the rectangle box[i] = (y0, x0, h, w) (pixels, float) of image i to black."""
  _, h, w, _ = images.shape
  ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
  y0, x0, bh, bw = (box[:, i, None, None] for i in range(4))
  inside = (ys >= y0) & (ys < y0 + bh) & (xs >= x0) & (xs < x0 + bw)
  return jnp.where(inside[..., None], 0.0, images)


def grayscale(images: jax.Array) -> jax.Array:
  """Luma Y = 0.299 R + 0.587 G + 0.114 B, repeated over the three channels."""
  y = images @ _LUMA
  return jnp.broadcast_to(y[..., None], images.shape)


def color_jitter(images: jax.Array, factors: jax.Array) -> jax.Array:
  """Brightness, contrast and saturation (in that order) with factors [B, 3], as
  torchvision's adjust_*: brightness x·f; contrast mean_gray + f·(x - mean_gray); saturation
  gray + f·(x - gray); clipped to [0, 255] after each."""
  fb, fc, fs = (factors[:, i, None, None, None] for i in range(3))
  x = jnp.clip(images * fb, 0.0, 255.0)
  mean = grayscale(x).mean(axis=(1, 2, 3), keepdims=True)
  x = jnp.clip(mean + fc * (x - mean), 0.0, 255.0)
  return jnp.clip(grayscale(x) + fs * (x - grayscale(x)), 0.0, 255.0)


def augment(images: jax.Array, rng: jax.Array,
            params: AugmentParams = AugmentParams()) -> jax.Array:
  """IG-FIQA's augmented copy of a batch [B, H, W, 3] (uint8 or 0-255 float) → float32.

  Per image, independently: downscale-upscale (p_rescale), colour jitter (p_jitter),
  grayscale (p_gray), random erasing (p_erase), in that order; each degradation not drawn
  leaves the image unchanged.
  """
  x = images.astype(jnp.float32)
  b, h, w, _ = x.shape
  keys = jax.random.split(rng, 8)

  def coin(key, p):
    return (jax.random.uniform(key, (b,)) < p)[:, None, None, None]

  scale = jax.random.uniform(keys[0], (b,), minval=params.min_scale, maxval=1.0)
  x = jnp.where(coin(keys[1], params.p_rescale), rescale(x, scale), x)
  factors = jax.random.uniform(keys[2], (b, 3), minval=1.0 - params.jitter,
                               maxval=1.0 + params.jitter)
  x = jnp.where(coin(keys[3], params.p_jitter), color_jitter(x, factors), x)
  x = jnp.where(coin(keys[4], params.p_gray), grayscale(x), x)
  # Erasing box: area fraction and log-uniform aspect ratio, clipped into the image.
  area = jax.random.uniform(keys[5], (b,), minval=params.erase_area[0],
                            maxval=params.erase_area[1]) * h * w
  lo, hi = jnp.log(jnp.array(params.erase_aspect))
  aspect = jnp.exp(jax.random.uniform(keys[6], (b,), minval=lo, maxval=hi))
  bh = jnp.minimum(jnp.sqrt(area * aspect), h)
  bw = jnp.minimum(jnp.sqrt(area / aspect), w)
  u = jax.random.uniform(keys[7], (b, 3))
  box = jnp.stack([u[:, 0] * (h - bh), u[:, 1] * (w - bw), bh, bw], axis=1)
  x = jnp.where((u[:, 2] < params.p_erase)[:, None, None, None], erase(x, box), x)
  return x
