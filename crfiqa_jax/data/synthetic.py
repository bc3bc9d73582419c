"""Synthetic face-like identities with degradations of known kind and severity.

Every identity is a vector of stable traits: head shape, skin and hair colour, hairline,
eye spacing/height/size/colour, brow thickness and tilt, nose size, mouth width and lip
colour, a beard or glasses, and a skin texture of identity-specific frequencies. A small
CNN has to learn these shapes to tell identities apart; none of them is a colour code.

Every sample varies naturally (head roll, shift, scale and yaw, eye openness, smile,
lighting direction and strength, background), then receives one degradation of a kind in
`KINDS` at a severity s ∈ [0, 1] (s = 0 is nearly clean). Kind and severity are stored in
the record metadata, so a quality estimate can be checked against the truth.

Splits: "train" (identities 0..N-1) and "test" (M further, disjoint identities). The test
split's pairs are all pairs of its images (genuine = same identity); `crfiqa_jax.data.open_pairs` gives
them. Output is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from crfiqa_jax.data import records
from crfiqa_jax.data.codecs import encode_jpeg

log = logging.getLogger(__name__)

KINDS = ("blur", "downscale", "noise", "occlusion", "jpeg", "exposure")


@dataclasses.dataclass(frozen=True)
class Identity:
  skin: np.ndarray       # RGB in [0, 1]
  hair: np.ndarray
  iris: np.ndarray
  lips: np.ndarray
  head_w: float
  head_h: float
  hairline: float
  eye_dx: float
  eye_y: float
  eye_r: float
  brow_t: float
  brow_tilt: float
  nose_len: float
  nose_w: float
  mouth_w: float
  mouth_y: float
  beard: float
  glasses: float
  tex_freq: np.ndarray   # (3, 2) spatial frequencies of the skin texture
  tex_phase: np.ndarray  # (3,)
  tex_amp: float


def make_identity(rng: np.random.Generator) -> Identity:
  return Identity(
      # Skin tones on one dark→light line (plus a little hue), hair from black to blond:
      # colour alone separates few identities.
      skin=np.array([0.35, 0.22, 0.15]) + rng.uniform() * np.array([0.6, 0.58, 0.55])
      + rng.normal(0, 0.02, 3),
      hair=np.array([0.05, 0.04, 0.03]) + rng.uniform() ** 2 * np.array([0.65, 0.5, 0.3])
      + rng.normal(0, 0.02, 3),
      iris=rng.uniform(0.05, 0.7, 3),
      lips=rng.uniform([0.45, 0.1, 0.1], [0.9, 0.45, 0.45]),
      head_w=rng.uniform(0.55, 0.78), head_h=rng.uniform(0.72, 0.92),
      hairline=rng.uniform(-0.75, -0.35),
      eye_dx=rng.uniform(0.2, 0.36), eye_y=rng.uniform(-0.28, -0.05),
      eye_r=rng.uniform(0.06, 0.12),
      brow_t=rng.uniform(0.02, 0.07), brow_tilt=rng.uniform(-0.25, 0.25),
      nose_len=rng.uniform(0.12, 0.3), nose_w=rng.uniform(0.05, 0.12),
      mouth_w=rng.uniform(0.14, 0.32), mouth_y=rng.uniform(0.35, 0.55),
      beard=float(rng.random() < 0.25), glasses=float(rng.random() < 0.2),
      tex_freq=rng.uniform(2.0, 9.0, (3, 2)) * rng.choice([-1, 1], (3, 2)),
      tex_phase=rng.uniform(0, 2 * np.pi, 3), tex_amp=rng.uniform(0.03, 0.12))


def _ellipse(u, v, cx, cy, a, b, sharp):
  """Soft mask of the ellipse ((u-cx)/a)² + ((v-cy)/b)² < 1; `sharp` ~ edge width in px."""
  d = 1.0 - ((u - cx) / a) ** 2 - ((v - cy) / b) ** 2
  return 1.0 / (1.0 + np.exp(-np.clip(d * sharp, -30, 30)))


def _paint(img, mask, colour):
  img += mask[..., None] * (colour - img)


def render(ident: Identity, rng: np.random.Generator, size: int) -> np.ndarray:
  """One natural-looking sample of `ident`: float32 [size, size, 3] in [0, 1]."""
  roll = rng.normal(0, 0.12)
  yaw = rng.normal(0, 0.12)
  scale = rng.uniform(0.92, 1.08)
  tx, ty = rng.normal(0, 0.04, 2)
  eye_open = rng.uniform(0.45, 1.0)
  smile = rng.normal(0, 0.08)
  light_dir = rng.uniform(0, 2 * np.pi)
  light = rng.uniform(0.0, 0.35)

  g = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  x, y = np.meshgrid(g, g)
  c, s = np.cos(roll), np.sin(roll)
  u = (c * (x - tx) + s * (y - ty)) / scale
  v = (-s * (x - tx) + c * (y - ty)) / scale
  sharp = size / 4.0
  feat = u + yaw * 0.35 * np.cos(v)  # features shift with yaw, the outline barely does

  bg = rng.uniform(0.1, 0.9, 3)
  bg2 = rng.uniform(0.1, 0.9, 3)
  img = (bg + (bg2 - bg) * ((y + 1) / 2)[..., None]).astype(np.float32)

  _paint(img, _ellipse(u, v, 0, -0.12, ident.head_w * 1.12, ident.head_h * 0.95, sharp),
         ident.hair)
  face = _ellipse(u, v, 0, 0.05, ident.head_w, ident.head_h, sharp)
  tex = sum(np.sin(ident.tex_freq[k, 0] * u + ident.tex_freq[k, 1] * v + ident.tex_phase[k])
            for k in range(3)) / 3
  skin = ident.skin[None, None] * (1 + ident.tex_amp * tex[..., None])
  img += face[..., None] * (skin - img)
  _paint(img, face * (1 / (1 + np.exp(-(ident.hairline - v) * sharp))), ident.hair)
  if ident.beard:
    _paint(img, face * 0.85 * (1 / (1 + np.exp(-(v - ident.mouth_y + 0.08) * sharp))),
           ident.hair * 0.8)
  for side in (-1, 1):
    ex = side * ident.eye_dx
    brow_y = ident.eye_y - 2.0 * ident.eye_r + side * ident.brow_tilt * 0.1
    _paint(img, _ellipse(feat, v, ex, brow_y, ident.eye_r * 1.5, ident.brow_t, sharp), ident.hair * 0.7)
    _paint(img, _ellipse(feat, v, ex, ident.eye_y, ident.eye_r * 1.3,
                         ident.eye_r * 0.75 * eye_open, sharp), np.array([0.95, 0.95, 0.95]))
    _paint(img, _ellipse(feat, v, ex, ident.eye_y, ident.eye_r * 0.6,
                         ident.eye_r * 0.6 * eye_open, sharp), ident.iris)
    if ident.glasses:
      ring = (_ellipse(feat, v, ex, ident.eye_y, ident.eye_r * 2.2, ident.eye_r * 1.8, sharp)
              - _ellipse(feat, v, ex, ident.eye_y, ident.eye_r * 1.9, ident.eye_r * 1.5, sharp))
      _paint(img, np.clip(ring, 0, 1), np.array([0.05, 0.05, 0.05]))
  nose_y = ident.eye_y + 0.08 + ident.nose_len / 2
  _paint(img, 0.6 * _ellipse(feat, v, 0, nose_y, ident.nose_w, ident.nose_len / 2, sharp),
         ident.skin * 0.6)
  mouth = _ellipse(feat, v - smile * (feat / max(ident.mouth_w, 1e-3)) ** 2, 0, ident.mouth_y,
                   ident.mouth_w, 0.045, sharp)
  _paint(img, mouth, ident.lips)
  shade = 1 + light * (x * np.cos(light_dir) + y * np.sin(light_dir))
  white_balance = rng.uniform(0.9, 1.1, 3)
  return np.clip(img * shade[..., None] * white_balance, 0, 1)


def degrade(img: np.ndarray, kind: str, severity: float, rng: np.random.Generator) -> np.ndarray:
  """Applies `kind` at `severity` ∈ [0, 1] to a float [0, 1] image; returns uint8."""
  size = img.shape[0]
  px = size / 64.0  # severities are defined for 64-px faces and scale with the image
  u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
  # Strengths are calibrated so that, for a model trained on this data, every kind at
  # severity 1 costs roughly the same genuine similarity (docs/demo.md).
  if kind == "blur":
    out = Image.fromarray(u8).filter(ImageFilter.GaussianBlur(radius=0.2 + 6.0 * severity * px))
    return np.asarray(out)
  if kind == "downscale":
    small = max(3, int(round(size / (1 + 11 * severity))))
    out = Image.fromarray(u8).resize((small, small), Image.BILINEAR).resize((size, size),
                                                                           Image.BILINEAR)
    return np.asarray(out)
  if kind == "noise":
    noisy = u8 + rng.normal(0, 150 * severity, u8.shape[:2] + (1,)) \
        + rng.normal(0, 60 * severity, u8.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)
  if kind == "occlusion":
    area = 0.6 * severity * 0.7 ** 2  # fraction of the face box (~0.7 of the image side)
    h = int(round(size * np.sqrt(area) * rng.uniform(0.7, 1.4)))
    w = int(round(size * area / max(h / size, 1e-3)))
    h, w = min(h, size), min(w, size)
    y0 = rng.integers(int(0.15 * size), max(int(0.15 * size) + 1, int(0.85 * size) - h + 1))
    x0 = rng.integers(int(0.15 * size), max(int(0.15 * size) + 1, int(0.85 * size) - w + 1))
    out = u8.copy()
    out[y0:y0 + h, x0:x0 + w] = rng.integers(0, 255, 3)
    return out
  if kind == "jpeg":
    # Low-resolution capture stored with heavy compression (CCTV-like): JPEG alone leaves a
    # 64-px face recognisable, so resolution drops with it.
    small = max(8, int(round(size / (1 + 4 * severity))))
    q = int(round(40 - 39 * severity))
    buf = io.BytesIO()
    Image.fromarray(u8).resize((small, small), Image.BILINEAR).save(buf, format="JPEG",
                                                                   quality=max(q, 1))
    out = Image.open(buf).convert("RGB").resize((size, size), Image.NEAREST)
    return np.asarray(out)
  if kind == "exposure":
    f = img.mean()
    contrast = 1 - 0.95 * severity
    shift = rng.choice([-1, 1]) * 0.45 * severity
    out = np.clip(f + (img - f) * contrast + shift, 0, 1)
    return (out * 255 + 0.5).astype(np.uint8)
  raise ValueError(f"unknown degradation {kind!r}; kinds: {KINDS}")


def samples(num_identities: int, per_identity: int, *, seed: int, size: int,
            first_identity: int = 0, label_offset: int = 0):
  """Yields record dicts (JPEG bytes at quality 95, label, metadata) in a fixed order.

  Identity i's traits come from (seed, i) alone, so splits never share identities.
  """
  for i in range(first_identity, first_identity + num_identities):
    ident = make_identity(np.random.default_rng([seed, i, 0]))
    for k in range(per_identity):
      rng = np.random.default_rng([seed, i, k + 1])
      kind = KINDS[int(rng.integers(len(KINDS)))]
      # Like real training sets: most faces fine, a tail of bad ones (P(s > 0.7) ≈ 16%).
      severity = float(rng.uniform() ** 2)
      img = degrade(render(ident, rng, size), kind, severity, rng)
      yield {"image": encode_jpeg(img, quality=95),
             "label": i - first_identity + label_offset,
             "metadata": {"identity": i, "kind": kind, "severity": round(severity, 6)}}


def generator_params(*, identities: int, per_identity: int, eval_identities: int,
                     eval_per_identity: int, seed: int = 0, image_size: int = 64) -> dict:
  """What determines a synthetic dataset; stored with it so a cache can be checked."""
  return {"identities": identities, "per_identity": per_identity,
          "eval_identities": eval_identities, "eval_per_identity": eval_per_identity,
          "seed": seed, "image_size": image_size}


def write_dataset(out_dir, *, identities: int, per_identity: int, eval_identities: int,
                  eval_per_identity: int, seed: int = 0, image_size: int = 64) -> Path:
  """Writes train (identities × per_identity) and test (disjoint eval identities) splits."""
  splits = {
      "train": lambda: samples(identities, per_identity, seed=seed, size=image_size),
      "test": lambda: samples(eval_identities, eval_per_identity, seed=seed, size=image_size,
                              first_identity=identities),
  }
  meta = {"source": "synthetic", "seed": seed, "image_size": image_size,
          "test_pairs": "all", "kinds": list(KINDS),
          "test_num_classes": eval_identities,
          "generator": generator_params(identities=identities, per_identity=per_identity,
                                        eval_identities=eval_identities,
                                        eval_per_identity=eval_per_identity, seed=seed,
                                        image_size=image_size)}
  return records.write_records(out_dir, splits, num_classes=identities, metadata=meta,
                               description="crfiqa_jax synthetic faces")


def ensure_dataset(config) -> None:
  """Generates config.synthetic into config.data_dir, or checks that the dataset already
  there was generated with the same parameters (a clear error otherwise: never silently
  train or evaluate on other data than the config describes)."""
  out = Path(config.data_dir)
  s = config.synthetic
  want = generator_params(identities=s.identities, per_identity=s.per_identity,
                          eval_identities=s.eval_identities,
                          eval_per_identity=s.eval_per_identity, seed=s.seed,
                          image_size=config.image_size)
  if (records.dataset_dir(out) / "dataset_info.json").exists():
    have = records.read_info(out).get("generator")
    if have != want:
      diff = ", ".join(f"{k}: cached {(have or {}).get(k)} vs config {v}"
                       for k, v in want.items() if (have or {}).get(k) != v)
      raise ValueError(f"{out} holds synthetic data generated with other parameters "
                       f"({diff or 'no record of its parameters'}); delete {out} or use "
                       "another --workdir")
    log.info("Using cached synthetic dataset in %s", out)
    return
  log.info("Generating synthetic faces: %d×%d train, %d×%d held-out → %s", s.identities,
           s.per_identity, s.eval_identities, s.eval_per_identity, out)
  write_dataset(out, **want)
