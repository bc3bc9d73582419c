"""Image codecs: every photo mode decodes to uint8 RGB, a decoder warning is counted not
raised, outcomes are counted for converters, and the one resize policy."""

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax.data import codecs


def test_decode_handles_photo_modes():
  """16-bit grayscale keeps its top byte (PIL's convert would clip), RGBA drops alpha,
  EXIF orientation is applied on request."""
  g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
  buf = io.BytesIO()
  Image.fromarray(g16).save(buf, "PNG")
  out = codecs.decode_image(buf.getvalue())
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], (g16 >> 8).astype(np.uint8))
  # 16-bit RGB PNG, written by hand (PIL cannot write one): PIL reads its top bytes.
  rgb16 = (np.arange(60).reshape(4, 5, 3) * 1000).astype(">u2")

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row.tobytes() for row in rgb16)))
         + chunk(b"IEND", b""))
  np.testing.assert_array_equal(codecs.decode_image(png), (rgb16 >> 8).astype(np.uint8))
  rgba = np.zeros((4, 6, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 10
  buf = io.BytesIO()
  Image.fromarray(rgba).save(buf, "PNG")
  np.testing.assert_array_equal(codecs.decode_image(buf.getvalue()), rgba[..., :3])
  wide = np.zeros((20, 40, 3), np.uint8)
  wide[:, :10] = 255  # the left quarter is white
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90° clockwise to display"
  buf = io.BytesIO()
  Image.fromarray(wide).save(buf, "JPEG", exif=exif, quality=95)
  assert codecs.decode_image(buf.getvalue()).shape == (20, 40, 3)
  upright = codecs.decode_image(buf.getvalue(), exif_orientation=True)
  assert upright.shape == (40, 20, 3)
  assert upright[:8].mean() > 200 and upright[-8:].mean() < 50  # left edge → top


class _Counts:
  def __init__(self):
    self.seen = []

  def add(self, what, where=None):
    self.seen.append((what, where))


def _warning_jpeg():
  """A JPEG with filler bytes before its end marker, as many as libjpeg needs to report
  "extraneous bytes before marker" (its bit buffer swallows the first few)."""
  img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
  data = codecs.encode_jpeg(img)
  for n in range(1, 16):
    bad = data[:-2] + b"\x00" * n + data[-2:]
    if codecs.decode_checked(bad)[1] is not None:
      return bad
  raise AssertionError("could not provoke libjpeg's extraneous-bytes warning")


def test_decode_counted_counts_each_outcome():
  stats = _Counts()
  img = np.full((8, 8, 3), 200, np.uint8)
  got, warning = codecs.decode_counted(codecs.encode_jpeg(img, quality=100), "a", stats)
  assert warning is None and stats.seen == [] and np.abs(got.astype(int) - 200).max() <= 2
  assert codecs.decode_counted(b"not an image", "b", stats) is None
  assert stats.seen[0][0] == "skipped: undecodable image" and stats.seen[0][1].startswith("b:")
  got, warning = codecs.decode_counted(_warning_jpeg(), "c", stats)
  assert got.shape == (16, 16, 3) and "extraneous" in warning
  assert stats.seen[1] == ("kept: decodes with a warning", f"c: {warning}")


def test_decode_image_counts_a_warning_and_refuses_a_truncated_jpeg():
  before = sum(codecs.decode_warnings.values())
  assert codecs.decode_image(_warning_jpeg()).shape == (16, 16, 3)
  assert sum(codecs.decode_warnings.values()) == before + 1
  img = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
  data = codecs.encode_jpeg(img)  # cut in the middle of its scan data
  with pytest.raises(ValueError, match="(?i)truncated"):
    codecs.decode_image(data[: len(data) // 2])


def test_fit_image_resizes_larger_squares_and_names_what_it_refuses():
  img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
  same = codecs.fit_image(img, 64)
  assert same is img
  want = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR))
  np.testing.assert_array_equal(codecs.fit_image(img, 32), want)
  for bad in (img[:, :60], img[:16, :16]):
    with pytest.raises(ValueError, match=re.escape(f"shape {bad.shape}")):
      codecs.fit_image(bad, 32)


def test_image_extensions_are_lower_case_suffixes():
  assert ".jpg" in codecs.IMAGE_EXTENSIONS and ".png" in codecs.IMAGE_EXTENSIONS
  assert all(e.startswith(".") and e == e.lower() for e in codecs.IMAGE_EXTENSIONS)
