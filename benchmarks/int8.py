"""Would an int8 engine keep the ranking? The two post-training int8 quantisations of the
model's ONNX file, each against float32 JAX on real faces.

    python benchmarks/int8.py --checkpoint=MODEL --data=PREPARED [--calibration 300]
        [--calibration-split train]

* OpenVINO: NNCF's quantisation (`quantize_openvino`), run by OpenVINO's CPU plugin (AMX-INT8
  and VNNI where the CPU has them);
* onnxruntime: a static QDQ quantisation (`quantize`: weights int8 per output channel,
  activations uint8 from min/max calibration).

Both are calibrated on faces of other people (--calibration-split). The OpenVINO one needs
NNCF (`pip install nncf`; 3.4 measured), which nothing else here uses. The figures are those
of benchmarks/ranking.py (Spearman, embedding cosine, the held-out ERC table, against
jax/fp32); an engine serves scores only where they keep the ranking (docs/engines.md: int8
does not, so crfiqa_jax offers no int8 engine). benchmarks/score.py --int8 times them.
"""

import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def quantize(fp32_path, calibration: np.ndarray) -> bytes:
  """Static QDQ int8 quantisation of a float32 ONNX file; `calibration` float32 [N, 3, S, S]
  normalised faces."""
  from onnxruntime import quantization as q

  class Reader(q.CalibrationDataReader):
    def __init__(self):
      self._it = iter([{"input": calibration[i:i + 32]} for i in range(0, len(calibration), 32)])

    def get_next(self):
      return next(self._it, None)

  logging.disable(logging.WARNING)  # the quantiser warns about every BatchNormalization
  try:
    with tempfile.TemporaryDirectory() as d:
      out = Path(d) / "int8.onnx"
      q.quantize_static(str(fp32_path), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                        per_channel=True, activation_type=q.QuantType.QUInt8,
                        weight_type=q.QuantType.QInt8)
      return out.read_bytes()
  finally:
    logging.disable(logging.NOTSET)


def quantize_openvino(fp32_path, calibration: np.ndarray, out_dir) -> Path:
  """NNCF's post-training int8 quantisation of a float32 ONNX file for OpenVINO, calibrated
  on `calibration` uint8 faces [N, S, S, 3]: convolutions and matrix products in int8
  (weights per channel, activations from the calibration statistics, fast bias correction),
  the rest float32. Returns the OpenVINO IR (.xml beside its .bin) in out_dir."""
  # NNCF sends usage statistics unless it sees a CI environment; nothing here may go out.
  os.environ.setdefault("CI", "true")
  import nncf
  import openvino as ov
  model = ov.Core().read_model(str(fp32_path))
  x = nchw(calibration)
  data = nncf.Dataset([x[i:i + 1] for i in range(len(x))])
  logging.disable(logging.WARNING)
  try:
    quantised = nncf.quantize(model, data, subset_size=len(x))
  finally:
    logging.disable(logging.NOTSET)
  out = Path(out_dir) / "int8.xml"
  out.parent.mkdir(parents=True, exist_ok=True)
  ov.save_model(quantised, str(out))
  return out


def nchw(images: np.ndarray) -> np.ndarray:
  from crfiqa_jax import models
  return np.ascontiguousarray(models.normalize(images).transpose(0, 3, 1, 2))


def main():
  """benchmarks/ranking.py with only the int8 rows beside float32 JAX."""
  import ranking
  sys.argv[1:] = ["--int8", "--engines"] + sys.argv[1:]
  ranking.main()


if __name__ == "__main__":
  main()
