"""Image sources: N images by index, decoded on demand, for everything that scores images.

A source's `load(i)` gives a uint8 RGB [H, W, 3] image or raises `SkipImage(reason)`; a
skipped image is reported per image by whoever streams the source, never fatal.

  files_source(paths, image_size)     image files (folders and lists of aligned faces)
  records_source(data_dir, split, s)  a prepared split (`python -m crfiqa_jax.prepare`)
  array_source(images)                an in-memory uint8 [N, H, W, 3] array

Sizes. Records are aligned square crops written for a model's input size or larger; with
`image_size`, a larger square crop is resized to it (`codecs.fit_image`, as training
reads records) and any other shape is skipped with its reason. Image files are whatever a
user has: with `image_size`, a wrong-sized one is resized with a warning (or skipped with
`strict`); faces must be aligned for the scores to mean anything.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from crfiqa_jax.data.codecs import decode_image, fit_image
from crfiqa_jax.data.records import RecordSource

log = logging.getLogger(__name__)


class SkipImage(Exception):
  """A source cannot give this image; the message says why (reported, never fatal)."""


@dataclasses.dataclass
class ImageSource:
  """N images by index: `load(i)` → uint8 [H, W, 3] RGB, or raises SkipImage."""

  load: Callable[[int], np.ndarray]
  length: int
  name: Callable[[int], str] = str

  def __len__(self) -> int:
    return self.length


def files_source(paths: Sequence[str], *, image_size: int | None = None,
                 strict: bool = False) -> ImageSource:
  """Image files; wrong-sized images are resized with a warning (or refused if strict)."""

  def load(i):
    try:
      img = decode_image(Path(paths[i]).read_bytes())
    except Exception as e:  # unreadable file or undecodable bytes: reported per image
      raise SkipImage(f"unreadable ({type(e).__name__}: {e})") from None
    if image_size is None or img.shape[:2] == (image_size, image_size):
      return img
    if strict:
      raise SkipImage(f"is {img.shape[1]}x{img.shape[0]}, not {image_size}x{image_size} "
                      "(--strict)")
    log.warning("%s is not %dx%d: resized (faces must be aligned for meaningful scores)",
                paths[i], image_size, image_size)
    return np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.BILINEAR))

  return ImageSource(load, len(paths), lambda i: str(paths[i]))


def records_source(data_dir, split: str = "test", *, image_size: int | None = None
                   ) -> ImageSource:
  """The images of a prepared split, at `image_size` when given (module docstring)."""
  src = RecordSource(data_dir, split)

  def load(i):
    try:
      img = decode_image(src[i]["image"])
    except Exception as e:  # one bad record is reported per image, never fatal
      raise SkipImage(f"record {i}: undecodable ({type(e).__name__}: {e})") from None
    if image_size is None:
      return img
    try:
      return fit_image(img, image_size)
    except ValueError as e:
      raise SkipImage(f"record {i}: {e}") from None

  return ImageSource(load, len(src), lambda i: f"{data_dir}[{split}][{i}]")


def array_source(images: np.ndarray) -> ImageSource:
  """An in-memory uint8 [N, H, W, 3] array."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
  return ImageSource(lambda i: images[i], len(images))
