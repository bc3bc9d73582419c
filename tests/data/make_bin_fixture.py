"""Writes tests/data/tiny_verification.bin in the real insightface layout: a Python-2
protocol-2 pickle of (list of JPEG byte strings, list of bools), the images as py2 `str`
(BINSTRING opcodes, which Python 3 reads with encoding="bytes"). 3 pairs, 112×112 images;
pairs 0 and 2 genuine. Run once; the output is committed."""

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def py2_pickle(images, issame):
  out = [b"\x80\x02", b"]q\x00(" ]  # PROTO 2, EMPTY_LIST, BINPUT 0, MARK
  for img in images:
    out.append(b"T" + struct.pack("<I", len(img)) + img)  # BINSTRING (py2 str)
  out.append(b"e]q\x01(")  # APPENDS, EMPTY_LIST, BINPUT 1, MARK
  out += [b"\x88" if s else b"\x89" for s in issame]  # NEWTRUE / NEWFALSE
  out.append(b"e\x86q\x02.")  # APPENDS, TUPLE2, BINPUT 2, STOP
  return b"".join(out)


def main():
  rng = np.random.RandomState(0)
  images = []
  for i in range(6):
    base = np.full((112, 112, 3), 40 * i, np.uint8) + rng.randint(0, 30, (112, 112, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, "JPEG", quality=60)
    images.append(buf.getvalue())
  path = Path(__file__).with_name("tiny_verification.bin")
  path.write_bytes(py2_pickle(images, [True, False, True]))
  print("wrote", path, path.stat().st_size, "bytes")


if __name__ == "__main__":
  main()
