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
The table is computed three times per row, to separate what moves it: with the row's
quality and jax/fp32's features, with jax/fp32's quality and the row's features, and with
both (what a user of that engine sees). A row keeps the ranking of the quality when both
Spearmans are ≥ 0.999 and its quality moves the learned row by less than the printed
precision (1e-4); of the features, when the cosine is ≥ 0.999 and its features leave the
printed table as it is. With a training workdir, the table of
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
    if ref is None:
      ref, ref_table = (q, f), _table(q, f, held, args, meta, dlib)
      print("\nThe held-out table under jax/fp32 (as the main job prints it):")
      print("\n".join(realfaces.summary_lines(ref_table)))
      _main_job_table(args.checkpoint)
    tables = {"quality": _table(q, ref[1], held, args, meta, dlib),
              "features": _table(ref[0], f, held, args, meta, dlib),
              "both": _table(q, f, held, args, meta, dlib)}
    rows[name] = _compare(q, f, tables, ref, ref_table, held, time.perf_counter() - t)
  _print(rows)


def _print(rows):
  from crfiqa_jax.evaluation import realfaces
  print(f"\n{'engine/precision':22s} {'Spearman':>9s} {'Spearman':>9s} {'max|Δq|':>8s} "
        f"{'min':>9s} | {'ERC table: its quality':>24s} | {'ERC table: its features':>24s} "
        f"| {'both':>7s} | keeps the ranking of")
  print(f"{'':22s} {'held-out':>9s} {'photos':>9s} {'/ sd':>8s} {'cosine':>9s} | "
        f"{'max|Δ| learned, printed':>24s} | {'max|Δ| any row, printed':>24s} | "
        f"{'printed':>7s} | quality / features")
  for name, r in rows.items():
    print(f"{name:22s} {r['rho']:9.6f} {r['rho_photos']:9.6f} {r['dq']:8.1e} {r['cos']:9.6f} | "
          f"{r['quality'][1]:15.1e}, {r['quality'][0]:>7s} | "
          f"{r['features'][1]:15.1e}, {r['features'][0]:>7s} | {r['both'][0]:>7s} | "
          f"{'yes' if r['keeps_quality'] else 'NO'} / {'yes' if r['keeps_features'] else 'NO'}"
          f"   ({r['seconds']:.0f} s)")
  for name, r in rows.items():
    if r["both"][0] != "same":
      print(f"\n{name}: the table as a user would see it (its quality and features):")
      print("\n".join(realfaces.summary_lines(r["metrics"])))


def _table_diff(table, ref_table, rows=None) -> tuple[str, float]:
  """("same" or "differs": the table as realfaces.summary_lines prints it, 4 decimals; the
  largest unrounded difference over `rows`, default every row)."""
  from crfiqa_jax.evaluation import realfaces
  same = realfaces.summary_lines(table) == realfaces.summary_lines(ref_table)
  diff = max(abs(table["summary"][fr][m][c] - v)
             for fr, methods in ref_table["summary"].items() for m, cols in methods.items()
             if rows is None or m in rows for c, v in cols.items())
  return ("same" if same else "differs"), diff


def _compare(q, f, tables, ref, ref_table, held, seconds):
  """The figures of one row. Quality keeps the ranking: both Spearmans ≥ KEEP and, with the
  reference features, the learned row within the printed precision (< 1e-4); features keep
  it: cosine ≥ KEEP and, with the reference quality, the table prints the same."""
  from scipy import stats
  q0, f0 = ref
  d = f.shape[1] // 2
  cos = min((f[:, :d] * f0[:, :d]).sum(1).min(), (f[:, d:] * f0[:, d:]).sum(1).min())
  rho = stats.spearmanr(q[:held], q0[:held]).statistic
  rho_p = stats.spearmanr(q[held:], q0[held:]).statistic if len(q) - held > 2 else np.nan
  quality = _table_diff(tables["quality"], ref_table, rows=("learned",))
  features = _table_diff(tables["features"], ref_table)
  return {"rho": rho, "rho_photos": rho_p, "dq": np.abs(q - q0).max() / q0.std(), "cos": cos,
          "quality": quality, "features": features,
          "both": _table_diff(tables["both"], ref_table), "metrics": tables["both"],
          "keeps_quality": rho >= KEEP and not rho_p < KEEP and quality[1] < 1e-4,
          "keeps_features": cos >= KEEP and features[0] == "same", "seconds": seconds}


def _main_job_table(checkpoint):
  from crfiqa_jax.evaluation import realfaces
  path = Path(checkpoint) / "eval" / "metrics.json"
  if path.is_file():
    print(f"\nThe main job's table ({path.relative_to(Path(checkpoint).parent)}):")
    print("\n".join(realfaces.summary_lines(json.loads(path.read_text()))))


if __name__ == "__main__":
  main()
