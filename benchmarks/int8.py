"""Does the opt-in int8 engine keep the ranking? float32 vs int8 onnxruntime on real faces.

    python benchmarks/int8.py --checkpoint=runs/demo --faces=aligned/ \\
        [--identities=identity_CelebA.txt] [--pairs=200000]

Scores every aligned face in --faces with `--engine=onnxruntime` and with
`--engine=onnxruntime-int8` (crfiqa_jax.engines) and prints: the Spearman rank
correlation of the two quality vectors (the bar: ≥ 0.999), the largest quality
difference, and both engines' images/s (the whole stream: decode + forward). With
--identities (a file of `IMAGE_NAME IDENTITY` lines, CelebA's identity_CelebA.txt), also
the ERC of each quality vector: all genuine pairs plus up to --pairs random impostor pairs,
similarity = cosine of the float32 embeddings, FNMR at FMR 1e-3 (recomputed thresholds,
the released script's) per reject ratio, and the ERC's AUC.
"""

import argparse
import time
from pathlib import Path

import numpy as np


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--faces", required=True, help="folder of aligned face crops")
  p.add_argument("--identities", default=None)
  p.add_argument("--pairs", type=int, default=200_000)
  p.add_argument("--batch-size", type=int, default=64)
  args = p.parse_args()
  from scipy import stats

  from crfiqa_jax import engines, erc, inference, score
  names = score.list_inputs(args.faces)
  out = {}
  for engine in ("onnxruntime", "onnxruntime-int8"):
    pred = engines.load_predictor(args.checkpoint, engine=engine)
    src = inference.files_source(names, image_size=pred.image_size)
    inference.extract(pred, inference.array_source(np.zeros((8, pred.image_size,
                                                             pred.image_size, 3), np.uint8)),
                      features="none", progress=False)  # warm up
    t = time.perf_counter()
    feats, q, fails = inference.extract(pred, src, features="raw", batch_size=args.batch_size,
                                        progress=False)
    rate = len(names) / (time.perf_counter() - t)
    out[engine] = feats, q
    print(f"{engine:17s}: {rate:7.1f} images/s over {len(names)} faces "
          f"({len(fails)} unreadable)", flush=True)
  (f32, q32), (_, q8) = out["onnxruntime"], out["onnxruntime-int8"]
  ok = np.isfinite(q32) & np.isfinite(q8)
  rho = stats.spearmanr(q32[ok], q8[ok]).statistic
  print(f"Spearman(float32, int8) = {rho:.5f} over {ok.sum()} faces; max |Δq| = "
        f"{np.abs(q32 - q8)[ok].max():.4g} (quality range {np.ptp(q32[ok]):.4g})")
  if not args.identities:
    return
  ident = dict(ln.split() for ln in Path(args.identities).read_text().splitlines()[1:]
               if len(ln.split()) == 2)
  labels = np.array([int(ident.get(Path(n).name, -1)) for n in names])
  keep = ok & (labels >= 0)
  idx = np.flatnonzero(keep)
  lab = labels[idx]
  same = lab[:, None] == lab[None, :]
  ga, gb = np.nonzero(np.triu(same, 1))
  rng = np.random.default_rng(0)
  ia, ib = rng.integers(0, len(idx), (2, args.pairs))
  sel = (lab[ia] != lab[ib])
  a, b = np.r_[ga, ia[sel]], np.r_[gb, ib[sel]]
  genuine = np.r_[np.ones(len(ga), bool), np.zeros(sel.sum(), bool)]
  e = inference.l2_normalize(f32[idx])
  sim = np.einsum("ij,ij->i", e[a], e[b])
  print(f"ERC pairs: {len(ga)} genuine, {sel.sum()} impostor; FNMR at FMR 1e-3:")
  ratios = np.arange(0, 0.55, 0.05)
  for name, q in (("float32", q32), ("int8", q8)):
    qq = q[idx]
    fnmr = erc.error_versus_reject(sim, genuine, np.minimum(qq[a], qq[b]), fmr=1e-3,
                                   reject_ratios=ratios)
    auc = erc.erc_auc(ratios, fnmr)
    print(f"  {name:8s} AUC(0–0.5) {auc:.5f} | " + " ".join(f"{v:.4f}" for v in fnmr))


if __name__ == "__main__":
  main()
