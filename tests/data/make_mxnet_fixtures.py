"""Writes tests/data/mxnet/{train.rec,train.idx,property,expected.json} with mxnet's own
RecordIO writer: the oracle the pure-Python reader/writer are checked against.

Run once, in an isolated environment (mxnet needs numpy<1.24), and commit the output:
  python3 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install "numpy<1.24" mxnet==1.9.1 pillow
  /tmp/mxvenv/bin/python tests/data/make_mxnet_fixtures.py
"""

import io
import json
import os
import struct

import mxnet as mx
import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mxnet")
MAGIC = struct.pack("<I", 0xCED7230A)


def jpeg(seed, size=16):
  rng = np.random.RandomState(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.randint(0, 255, (size, size, 3)).astype(np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def main():
  os.makedirs(OUT, exist_ok=True)
  rec = mx.recordio.MXIndexedRecordIO(os.path.join(OUT, "train.idx"),
                                      os.path.join(OUT, "train.rec"), "w")
  labels = [0, 0, 1, 1, 2, 2]  # 6 images of 3 identities (keys 1..6)
  n = len(labels)
  expected = {}

  def put(key, header, data):
    payload = mx.recordio.pack(header, data)
    rec.write_idx(key, payload)
    lab = header.label
    expected[str(key)] = {"flag": int(header.flag),
                          "label": [float(x) for x in np.atleast_1d(lab)],
                          "id": int(header.id), "id2": int(header.id2), "data": data.hex()}

  # Record 0: image range header as insightface writes it: label = [N+1, N+1+ids].
  put(0, mx.recordio.IRHeader(2, [n + 1, n + 1 + 3], 0, 0), b"")
  for k, lab in enumerate(labels, start=1):
    data = jpeg(k)
    if k == 3:
      # The magic at 4-byte-aligned payload offsets (header is 24 bytes): split into parts.
      data = b"ab" + b"cd" + MAGIC + b"xyz!" + MAGIC + data
    if k == 5:
      put(k, mx.recordio.IRHeader(3, [float(lab), 0.25, -7.5], k, 0), data)  # multi-float
      continue
    put(k, mx.recordio.IRHeader(0, float(lab), k, 0), data)
  # Identity-range records follow the images: label = [first key, last key + 1].
  for ident in range(3):
    keys = [k for k, lab in enumerate(labels, start=1) if lab == ident]
    put(n + 1 + ident, mx.recordio.IRHeader(2, [keys[0], keys[-1] + 1], 0, 0), b"")
  rec.close()
  with open(os.path.join(OUT, "property"), "w") as f:
    f.write("3,112,112\n")
  with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
  # Confirm mxnet reads the split record back.
  r = mx.recordio.MXIndexedRecordIO(os.path.join(OUT, "train.idx"),
                                    os.path.join(OUT, "train.rec"), "r")
  h, s = mx.recordio.unpack(r.read_idx(3))
  assert s == bytes.fromhex(expected["3"]["data"]), "mxnet round trip"
  print("wrote", OUT, "with mxnet", mx.__version__)


if __name__ == "__main__":
  main()
