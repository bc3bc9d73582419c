"""Would an int8 engine keep the ranking? float32 vs int8 onnxruntime on real faces.

    python benchmarks/int8.py --checkpoint=runs/demo --faces=aligned/ \\
        [--identities=identity_CelebA.txt] [--calibration=256] [--pairs=200000]

The model's float32 ONNX export (crfiqa_jax.serve.engines' cached file) is quantised statically
to int8 by onnxruntime.quantization (`quantize`: QDQ, weights int8 per output channel,
activations uint8 from min/max calibration on the last --calibration faces of --faces,
which are then left out of the comparison). On the other faces it prints the Spearman
rank correlation of the two quality vectors (an engine must keep ≥ 0.999 to serve), the
largest quality difference and both sessions' images/s (forward only, batch 64). With
--identities (lines `IMAGE_NAME IDENTITY`, CelebA's identity_CelebA.txt), also the ERC
under each quality vector: all genuine pairs plus up to --pairs random impostor pairs,
similarity = cosine of the float32 embeddings, FNMR at FMR 1e-3 (recomputed thresholds,
the released script's) per reject ratio, and its AUC.

Measured with the demo model and a CelebA-trained one (docs/engines.md): Spearman 0.995
and 0.9989, below 0.999; int8 is therefore not an engine of crfiqa_jax.
"""

import argparse
import logging
import tempfile
import time
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


def nchw(images: np.ndarray) -> np.ndarray:
  from crfiqa_jax import models
  return np.ascontiguousarray(models.normalize(images).transpose(0, 3, 1, 2))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--faces", required=True, help="folder of aligned face crops")
  p.add_argument("--identities", default=None)
  p.add_argument("--calibration", type=int, default=256)
  p.add_argument("--pairs", type=int, default=200_000)
  args = p.parse_args()
  import onnxruntime as ort
  from scipy import stats

  from crfiqa_jax import models
  from crfiqa_jax.evaluation import erc
  from crfiqa_jax.serve import engines
  from crfiqa_jax.serve import inference
  from crfiqa_jax.serve import model_io
  from crfiqa_jax.serve import score
  from crfiqa_jax.data.records import decode_image
  model, variables, info = model_io.load_model(args.checkpoint)
  fp32 = engines.onnx_file(model, inference.host_local(variables), info, source=args.checkpoint)
  names = score.list_inputs(args.faces)
  size = int(info.get("image_size", 112))
  imgs = np.stack([decode_image(Path(n).read_bytes()) for n in names])
  if imgs.shape[1:3] != (size, size):
    raise SystemExit(f"faces are {imgs.shape[1:3]}, the model takes {size}×{size}")
  x = nchw(imgs)
  names, x, calib = names[:-args.calibration], x[:-args.calibration], x[-args.calibration:]
  with tempfile.TemporaryDirectory() as d:
    q8 = Path(d) / "int8.onnx"
    q8.write_bytes(quantize(fp32, calib))
    sessions = {"float32": ort.InferenceSession(str(fp32), engines.session_options()),
                "int8": ort.InferenceSession(str(q8), engines.session_options())}
  out, rates = {}, {}
  for _ in range(2):  # in turns; the second round's times are kept
    for k, s in sessions.items():
      t = time.perf_counter()
      res = [s.run(["embedding", "quality"], {"input": x[i:i + 64]}) for i in range(0, len(x), 64)]
      rates[k] = len(x) / (time.perf_counter() - t)
      out[k] = np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])
  for k, r in rates.items():
    print(f"{k:8s}: {r:8.1f} images/s over {len(x)} faces ({info['arch']}, {size}×{size})")
  (f32, q32), (_, q8v) = out["float32"], out["int8"]
  rho = stats.spearmanr(q32, q8v).statistic
  print(f"Spearman(float32, int8) = {rho:.5f}; max |Δq| = {np.abs(q32 - q8v).max():.4g} "
        f"(quality range {np.ptp(q32):.4g}); calibrated on {len(calib)} other faces")
  if not args.identities:
    return
  ident = dict(ln.split() for ln in Path(args.identities).read_text().splitlines()
               if len(ln.split()) == 2)
  lab = np.array([int(ident.get(Path(n).name, -1)) if ident.get(Path(n).name, "").isdigit()
                  else -1 for n in names])
  idx = np.flatnonzero(lab >= 0)
  lab = lab[idx]
  ga, gb = np.nonzero(np.triu(lab[:, None] == lab[None, :], 1))
  ia, ib = np.random.default_rng(0).integers(0, len(idx), (2, args.pairs))
  sel = lab[ia] != lab[ib]
  a, b = np.r_[ga, ia[sel]], np.r_[gb, ib[sel]]
  genuine = np.r_[np.ones(len(ga), bool), np.zeros(sel.sum(), bool)]
  e = models.l2_normalize(f32[idx])
  sim = np.einsum("ij,ij->i", e[a], e[b])
  ratios = np.arange(0, 0.55, 0.05)
  print(f"ERC: {len(ga)} genuine, {sel.sum()} impostor pairs; FNMR at FMR 1e-3 for reject "
        f"ratios {ratios[0]:.2f}…{ratios[-1]:.2f}:")
  for k, q in (("float32", q32), ("int8", q8v)):
    fnmr = erc.error_versus_reject(sim, genuine, np.minimum(q[idx][a], q[idx][b]), fmr=1e-3,
                                   reject_ratios=ratios)
    ok = np.isfinite(fnmr)  # a ratio can leave no genuine pair
    print(f"  {k:8s} AUC {erc.erc_auc(ratios[ok], fnmr[ok]):.5f} | "
          + " ".join(f"{v:.4f}" for v in fnmr))


if __name__ == "__main__":
  main()
