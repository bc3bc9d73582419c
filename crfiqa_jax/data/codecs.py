"""Image codecs: encoded bytes ↔ uint8 RGB arrays, the one resize policy, and the list of
image file extensions.

  decode_checked(data)      → (image, warning or None); raises ValueError if undecodable
  decode_image(data)        → image; a recoverable decoder warning is counted, never raised
  decode_counted(data, ...) → (image, warning) or None, each outcome counted
  encode_jpeg(image)        → JPEG bytes
  fit_image(image, size)    → an aligned square crop of at least size × size, resized to it

JPEG goes through simplejpeg; every other format through PIL.
"""

from __future__ import annotations

import collections
import io
import logging
import re

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# File name extensions of the images the package reads (folders, lists, pairs.txt).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")

# Images decoded with a recoverable error, per process, by libjpeg message. Read-time
# decoding counts these instead of raising: `prepare` accepted the record.
decode_warnings: collections.Counter = collections.Counter()
_LOGGED_WARNINGS = 10


def decode_checked(data: bytes, *, exif_orientation: bool = False
                   ) -> tuple[np.ndarray, str | None]:
  """Encoded image → (uint8 [H, W, 3] RGB, warning or None); raises ValueError if undecodable.

  JPEG goes through simplejpeg in strict mode; a recoverable libjpeg error (e.g. "Corrupt
  JPEG data: 2 extraneous bytes before marker 0xd9", which libjpeg and PIL only warn about)
  decodes again leniently and is returned as the warning. A truncated JPEG ("Premature end
  of JPEG file") stays an error: the lenient decoder would paint the missing rows grey.
  Other formats go through PIL: grayscale, palette, RGBA (alpha dropped) and CMYK become
  RGB; 16-bit grayscale keeps its top 8 bits (PIL's own conversion would clip at 255).
  With exif_orientation, the EXIF Orientation tag (camera photos) is applied.
  """
  if simplejpeg.is_jpeg(data) and not (exif_orientation and _exif_rotated(data)):
    try:
      return simplejpeg.decode_jpeg(data, colorspace="RGB"), None
    except ValueError as e:
      if "Premature end" in str(e):
        raise ValueError(f"truncated JPEG ({e})") from None
      try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False), str(e)
      except ValueError:
        raise ValueError(str(e)) from None
  try:
    with Image.open(io.BytesIO(data)) as im:
      if exif_orientation:
        im = ImageOps.exif_transpose(im)
      if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.max(initial=0) > 255 or im.mode.startswith("I;16"):
          arr = arr >> 8
        gray = np.clip(arr, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1), None
      return np.asarray(im.convert("RGB")), None
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    # PIL names the file object it read (an address that differs every run): drop it.
    why = re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", str(e))
    raise ValueError(f"{type(e).__name__}: {why}") from None


def _exif_rotated(data: bytes) -> bool:
  try:
    with Image.open(io.BytesIO(data)) as im:
      return im.getexif().get(0x0112, 1) not in (0, 1)
  except Exception:  # a broken EXIF block is the decoder's problem, not orientation's
    return False


def decode_image(data: bytes, *, exif_orientation: bool = False) -> np.ndarray:
  """Encoded image → uint8 [H, W, 3] RGB (see `decode_checked`). A recoverable decoder
  error is counted in `decode_warnings` and logged (the first few), never raised."""
  image, warning = decode_checked(data, exif_orientation=exif_orientation)
  if warning is not None:
    decode_warnings[warning] += 1
    total = sum(decode_warnings.values())
    if total <= _LOGGED_WARNINGS:
      log.warning("image decoded with a warning (%s)%s", warning,
                  "; further ones are only counted" if total == _LOGGED_WARNINGS else "")
  return image


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB")


def decode_counted(data: bytes, where: str, stats, *, exif_orientation: bool = False
                   ) -> tuple[np.ndarray, str | None] | None:
  """`decode_checked` with its outcome counted in `stats` (a converters.Stats, `where`
  naming the image): an undecodable image is counted as skipped and gives None; a
  recoverable decoder warning is counted as kept and returned with the image."""
  try:
    image, warning = decode_checked(data, exif_orientation=exif_orientation)
  except Exception as e:  # any decoder failure is a counted skip, never a crash
    stats.add("skipped: undecodable image", f"{where}: {type(e).__name__}: {e}")
    return None
  if warning is not None:
    stats.add("kept: decodes with a warning", f"{where}: {warning}")
  return image, warning


def fit_image(img: np.ndarray, size: int) -> np.ndarray:
  """An aligned square crop of at least size × size → size × size (PIL's antialiased
  bilinear resize), so a model can train or score at a lower resolution than the records
  were written at. Any other shape is a ValueError naming it."""
  if img.shape == (size, size, 3):
    return img
  h, w = img.shape[:2]
  if h != w or h < size or img.shape[2:] != (3,):
    raise ValueError(f"record image has shape {img.shape}, expected ({size}, {size}, 3) or a "
                     "larger square crop; re-run prepare with aligned faces of that size")
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
