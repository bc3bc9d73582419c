"""Does every engine and precision keep the ranking? Each against float32 JAX, on real faces.

    python benchmarks/ranking.py --checkpoint=MODEL --data=PREPARED [--split test]
        [--photos tests/fixtures/photos] [--engines jax/fp32 openvino/bf16 ...]
        [--int8 [--calibration-split train] [--calibration 300]]

MODEL: any model path `score` takes; PREPARED: a `prepare celeba` output (its held-out
split has verification pairs). Faces: every image of --split at the model's input size,
plus the photos of --photos detected and aligned (crfiqa_jax.data.faces; [detect] extra).
Every (engine, precision) this host offers (crfiqa_jax.serve.engines.offered; --engines
picks) scores them the way the held-out report does (image and mirror, batch 64); with
--int8, so does OpenVINO on the model quantised to int8 by NNCF (benchmarks/int8.py),
calibrated on the first --calibration faces of --calibration-split (other people).

Printed per row, against jax/fp32:
* quality Spearman over the held-out faces and over the photos, the largest quality
  difference relative to the quality's standard deviation;
* the smallest embedding cosine (image and mirror, every face);
* the held-out ERC table as the main job prints it (crfiqa_jax.evaluation.realfaces:
  the learned quality and the metadata baselines under the model's own features and, with
  the [dlib] extra, dlib's), compared with jax/fp32's at its printed precision (4 decimals).
A row keeps the ranking when both Spearmans and the cosine are ≥ 0.999 and its table
prints the same; the last column says so. With a training workdir, the table of
WORKDIR/eval/metrics.json (the main job's) is printed for comparison.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
KEEP = 0.999


def _photo_crops(folder, size):
  from crfiqa_jax.data import faces
  paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))
  crops = [c for _, c, _ in faces.photo_faces(paths, all_faces=True, size=size) if c is not None]
  return np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)


def _outputs(pred, images, batch):
  """(quality [N], features [N, 2D]: L2-normalised embedding of image and mirror)."""
  from crfiqa_jax.data import sources
  from crfiqa_jax.serve import inference
  feats, q, failures = inference.extract(pred, sources.array_source(images), features="concat",
                                         batch_size=batch, progress=False, gather=False)
  assert not failures, failures
  return q.astype(np.float64), feats.astype(np.float64)


def _table(quality, feats, held, args, meta, dlib):
  """The main job's summary (realfaces.pairs_report) for these qualities and features."""
  from crfiqa_jax.data import pairs
  from crfiqa_jax.evaluation import realfaces
  from crfiqa_jax.evaluation.pair_report import cosine_pairs
  a, b, genuine = pairs.read_pairs(args.data, args.split)
  sims = {"own": cosine_pairs(feats[:held], a, b)}
  if dlib is not None:
    sims["dlib"] = cosine_pairs(dlib.astype(np.float64), a, b)
  qualities = {"learned": quality[:held], **realfaces.metadata_baselines(meta)}
  with tempfile.TemporaryDirectory() as d:
    m = realfaces.pairs_report(sims, genuine, a, b, qualities, out_dir=Path(d), title="")
  return m


def _rounded(summary):
  return json.dumps(summary, sort_keys=True, default=lambda v: round(float(v), 4),
                    allow_nan=True).replace("NaN", "nan")


def _predictors(args, model, variables, info, images):
  """{row name: predictor} of every (engine, precision) asked, plus int8 with --int8."""
  from crfiqa_jax.serve import engines, inference
  cache = Path(tempfile.mkdtemp(prefix="ranking_"))
  pairs = [("jax", "fp32")] + [p for p in engines.offered(model) if p != ("jax", "fp32")]
  if args.engines:
    pairs = [("jax", "fp32")] + [tuple(e.split("/")) for e in args.engines if e != "jax/fp32"]
  out = {f"{e}/{p}": (lambda e=e, p=p: engines.make_predictor(
      model, variables, info, engine=e, precision=p, source=cache)) for e, p in pairs}
  if args.int8:
    import int8
    from crfiqa_jax.data import sources
    from crfiqa_jax.serve.onnx_predictor import OnnxPredictor
    from crfiqa_jax.serve.openvino_predictor import OpenVinoPredictor
    src = sources.records_source(args.data, args.calibration_split,
                                 image_size=int(info.get("image_size", 112)))
    calib = np.stack([src.load(i) for i in range(min(args.calibration, len(src)))])
    fp32 = engines.onnx_file(model, inference.host_local(variables), info, source=cache)
    xml = int8.quantize_openvino(fp32, calib, cache / "int8")
    out["openvino/int8 (NNCF)"] = lambda: OpenVinoPredictor(xml, "int8",
                                                            threads=engines.cpu_threads())
    qdq = cache / "int8_qdq.onnx"
    qdq.write_bytes(int8.quantize(fp32, int8.nchw(calib)))
    out["onnxruntime/int8 (QDQ)"] = lambda: OnnxPredictor(qdq,
                                                          options=engines.session_options())
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--photos", default=str(Path(__file__).resolve().parent.parent / "tests" /
                                         "fixtures" / "photos"))
  p.add_argument("--engines", nargs="*", default=None, help="ENGINE/PRECISION rows")
  p.add_argument("--int8", action="store_true")
  p.add_argument("--calibration-split", default="train")
  p.add_argument("--calibration", type=int, default=300)
  p.add_argument("--batch-size", type=int, default=64)
  args = p.parse_args()
  from crfiqa_jax.data import sources
  from crfiqa_jax.data.records import RecordSource
  from crfiqa_jax.evaluation import realfaces
  from crfiqa_jax.serve import model_io
  model, variables, info = model_io.load_model(args.checkpoint)
  size = int(info.get("image_size", 112))
  split = sources.records_source(args.data, args.split, image_size=size)
  held = len(split)
  photos = _photo_crops(args.photos, size)
  images = np.concatenate([np.stack([split.load(i) for i in range(held)]), photos])
  meta = RecordSource(args.data, args.split).labels_and_metadata()[1]
  dlib = realfaces.dlib_features(args.data, args.split)
  print(f"{info.get('arch')} at {size} px: {held} held-out faces of {args.data} "
        f"({args.split}), {len(photos)} faces of {len(list(Path(args.photos).glob('*.jpg')))} "
        f"photos; FR models: own{' and dlib' if dlib is not None else ''}", flush=True)
  rows, ref, ref_table = {}, None, None
  for name, build in _predictors(args, model, variables, info, images).items():
    t = time.perf_counter()
    q, f = _outputs(build(), images, args.batch_size)
    table = _table(q, f, held, args, meta, dlib)
    if ref is None:
      ref, ref_table = (q, f), table
      print("\nThe held-out table under jax/fp32 (as the main job prints it):")
      print("\n".join(realfaces.summary_lines(table)))
      _main_job_table(args.checkpoint)
    rows[name] = _compare(q, f, table, ref, ref_table, held, time.perf_counter() - t)
  print(f"\n{'engine/precision':22s} {'Spearman held-out':>18s} {'Spearman photos':>16s} "
        f"{'max|Δq|/sd':>11s} {'min cosine':>11s} {'ERC table':>10s}  keeps the ranking")
  for name, r in rows.items():
    print(f"{name:22s} {r['rho']:18.6f} {r['rho_photos']:16.6f} {r['dq']:11.2e} "
          f"{r['cos']:11.6f} {r['table']:>10s}  {'yes' if r['keeps'] else 'NO'}"
          f"   ({r['seconds']:.0f} s)")
  for name, r in rows.items():
    if r["table"] != "same":
      print(f"\n{name}: the table differs from jax/fp32's at 4 decimals:")
      print("\n".join(realfaces.summary_lines(r["metrics"])))


def _compare(q, f, table, ref, ref_table, held, seconds):
  from scipy import stats
  q0, f0 = ref
  d = f.shape[1] // 2
  cos = min((f[:, :d] * f0[:, :d]).sum(1).min(), (f[:, d:] * f0[:, d:]).sum(1).min())
  rho = stats.spearmanr(q[:held], q0[:held]).statistic
  rho_p = stats.spearmanr(q[held:], q0[held:]).statistic if len(q) - held > 2 else np.nan
  same = _rounded(table["summary"]) == _rounded(ref_table["summary"])
  keeps = rho >= KEEP and (np.isnan(rho_p) or rho_p >= KEEP) and cos >= KEEP and same
  return {"rho": rho, "rho_photos": rho_p, "dq": np.abs(q - q0).max() / q0.std(), "cos": cos,
          "table": "same" if same else "differs", "keeps": keeps, "metrics": table,
          "seconds": seconds}


def _main_job_table(checkpoint):
  from crfiqa_jax.evaluation import realfaces
  path = Path(checkpoint) / "eval" / "metrics.json"
  if path.is_file():
    print(f"\nThe main job's table ({path.relative_to(Path(checkpoint).parent)}):")
    print("\n".join(realfaces.summary_lines(json.loads(path.read_text()))))


if __name__ == "__main__":
  main()
