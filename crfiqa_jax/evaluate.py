"""Embedding and quality extraction, and pair-set ERC reports.

FR features follow the released evaluation: the L2-normalised embedding of the image and of
its horizontal flip, concatenated (cosine similarity of two such vectors is the mean of the
two halves' cosines). Quality is the raw `qs` output of the un-flipped image.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from crfiqa_jax import erc, reports
from crfiqa_jax.reports import FMRS, erc_table, plot_erc, random_pair_qualities

log = logging.getLogger(__name__)


def cosine(features: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  fa, fb = features[a], features[b]
  num = np.einsum("ij,ij->i", fa, fb)
  return num / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))


def all_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every unordered pair of distinct images: (a, b, genuine)."""
  a, b = np.triu_indices(len(labels), k=1)
  return a, b, labels[a] == labels[b]


def rankdata(x: np.ndarray) -> np.ndarray:
  """Average ranks (ties share their mean rank), as scipy.stats.rankdata."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  xs = x[order]
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], len(x)]
  avg = (starts + ends - 1) / 2 + 1
  ranks = np.empty(len(x))
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def spearman(x, y) -> float:
  rx, ry = rankdata(x), rankdata(y)
  return float(np.corrcoef(rx, ry)[0, 1])


def synthetic_report(features, quality, labels, severity, *, out_dir: Path, train_steps: int,
                     wall_seconds: float, kinds=None, random_orderings: int = 5,
                     seed: int = 0, pair_quality: str = "min") -> dict:
  """The demo's held-out evaluation: all pairs, learned vs random vs oracle (true severity).

  metrics.json carries both tables (crfiqa_jax.reports): "released" (the CR-FIQA paper's
  ERC; its AUCs also as "erc_auc", its FNMRs as "erc_fnmr") and "standard" (fiqat's EDC).
  """
  a, b, genuine = all_pairs(labels)
  sim = cosine(features, a, b)
  pair_q = reports.pair_quality(quality[a], quality[b], pair_quality)
  oracle = -np.maximum(severity[a], severity[b])  # the worse image of the pair
  methods = {"learned": pair_q, "oracle": oracle,
             "random": random_pair_qualities(len(labels), a, b, orderings=random_orderings,
                                             seed=seed, how=pair_quality)}
  table = erc_table(sim, genuine, methods)
  standard, curves = reports.standard_table(sim, genuine, methods, context="demo: ")
  standard["pair_quality"] = pair_quality
  metrics = {
      "spearman_quality_vs_severity": spearman(quality, severity),
      "spearman_by_kind": ({k: spearman(quality[kinds == k], severity[kinds == k])
                            for k in sorted(set(kinds))} if kinds is not None else {}),
      "erc_auc": {mode: {f: {m: table[mode][f][m]["auc"] for m in table[mode][f]}
                         for f in table[mode]} for mode in table},
      "erc_fnmr": {mode: {f: {m: table[mode][f][m]["fnmr"] for m in table[mode][f]}
                          for f in table[mode]} for mode in table},
      "reject_ratios": erc.RELEASED_RATIOS.tolist(),
      "released": table, "standard": standard,
      "num_pairs": int(len(sim)), "num_genuine_pairs": int(genuine.sum()),
      "num_images": int(len(labels)), "num_identities": int(len(np.unique(labels))),
      "train_steps": int(train_steps), "wall_seconds": float(wall_seconds),
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "scores.csv", "w") as f:
    f.write("index,label,quality,severity" + (",kind" if kinds is not None else "") + "\n")
    for i in range(len(labels)):
      f.write(f"{i},{labels[i]},{quality[i]:.6f},{severity[i]:.6f}"
              + (f",{kinds[i]}" if kinds is not None else "") + "\n")
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
  title = (f"Held-out synthetic identities: {len(sim):,} pairs "
           f"({int(genuine.sum()):,} genuine)")
  plot_erc(table, out_dir / "erc.png", title=title)
  reports.plot_standard(standard, curves, out_dir / "edc.png", title=title)
  return metrics


def split_labels_and_meta(data_dir, split: str):
  """Labels [N] and per-record metadata of a split, read without decoding any image."""
  from crfiqa_jax.data.records import RecordSource
  src = RecordSource(data_dir, split)
  recs = [src[i] for i in range(len(src))]
  return (np.array([r["label"] for r in recs], np.int64),
          [json.loads(r["metadata"] or "{}") for r in recs])


def check_eval_data(data_dir, split: str = "test"):
  """Raises now, not after training, if `data_dir` cannot serve the held-out report."""
  labels, meta = split_labels_and_meta(data_dir, split)
  if not len(labels):
    raise ValueError(f"eval_data_dir {data_dir} has an empty {split!r} split")
  if any("severity" not in m for m in meta):
    raise ValueError(f"eval_data_dir {data_dir} {split!r} split lacks per-image 'severity' "
                     "metadata (the demo's held-out report needs it): set "
                     "--config.eval_data_dir= to skip it, or use `prepare synthetic` data")
  return labels, meta


def evaluate_checkpoint_state(state, config, out_dir: Path, *, started: float | None = None):
  """Evaluates a trained state on config.eval_data_dir's "test" split (synthetic layout).

  Streams the split through every local device; on several processes each takes a slice
  and gathers the results; process 0 writes the report and returns its metrics, the others
  return None."""
  import jax

  from crfiqa_jax import inference, models
  t0 = time.perf_counter()
  labels, meta = check_eval_data(config.eval_data_dir, "test")
  model = models.create_model(config.model, embedding_dim=config.embedding_dim)
  predictor = inference.FlaxPredictor(model, inference.inference_variables(state),
                                      image_size=config.image_size)
  feats, quality, failures = inference.extract(
      predictor, inference.records_source(config.eval_data_dir, "test"),
      batch_size=config.get("eval_batch_size", 256), desc="held-out evaluation")
  if failures:
    raise ValueError(f"{len(failures)} held-out images could not be decoded, e.g. "
                     f"{next(iter(failures.values()))}")
  severity = np.array([m["severity"] for m in meta], np.float64)
  kinds = np.array([m.get("kind", "") for m in meta])
  wall = time.perf_counter() - (started if started is not None else t0)
  if jax.process_index() != 0:  # every process took part in the inference; one reports
    return None
  return synthetic_report(feats, quality, labels, severity, out_dir=Path(out_dir),
                          train_steps=int(np.asarray(inference.host_local(state.step))),
                          wall_seconds=wall, kinds=kinds)


# ---------------------------------------------------------------------------------------
# The benchmark runner: python -m crfiqa_jax.evaluate
# ---------------------------------------------------------------------------------------

def _is_checkpoint(src: str) -> bool:
  p = Path(src)
  return p.suffix in (".pth", ".pt") or (p / "model.json").exists() or \
      (p / "config.json").exists()


def _spec(s: str) -> tuple[str, str]:
  name, sep, src = s.partition("=")
  if not sep:
    return Path(s).stem or s, s
  return name, src


def run_report(benchmarks: list[str], qualities: list[str], frs: list[str], out_dir: Path, *,
               fmrs=("1e-2", "1e-3", "1e-4"), modes=erc.MODES, arch: str | None = None,
               discard_limit: float | None = None, batch_size: int = 64,
               pair_quality: str = "min", standard_fmrs=reports.STANDARD_FMRS) -> dict:
  """Evaluates every quality source with every FR source on every benchmark; writes into
  `out_dir` results.json with both tables (crfiqa_jax.reports: "erc" = released, "standard"
  = fiqat's EDC), auc_table.csv (released AUCs), pauc_table.csv (standard pAUC@0.2, raw and
  minus the theoretical best) and a PNG per benchmark × FR × FMR × mode (released) and per
  benchmark × FR × FMR (standard)."""
  from crfiqa_jax import inference
  from crfiqa_jax import pairsets as bm
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  predictors: dict = {}

  def infer(src, bench, features):
    """(features, quality) of the benchmark's images with the model at `src` (streamed)."""
    if src not in predictors:
      predictors[src] = inference.load_predictor(src, arch)
    feats, q, failures = inference.extract(predictors[src], bench.source, features=features,
                                           batch_size=batch_size, dtype=np.float32,
                                           desc=f"{bench.name} × {Path(src).name}")
    for i, why in sorted(failures.items())[:20]:
      log.warning("%s: %s: %s (its pairs are left out)", bench.name, bench.keys[i], why)
    return feats, q

  results: dict = {}
  for spec in benchmarks:
    bench = bm.load_benchmark(spec)
    n = len(bench.keys)
    per_image_q: dict[str, np.ndarray] = {}
    for qspec in qualities:
      name, src = _spec(qspec)
      if src == "random":
        continue
      if src == "oracle":
        if bench.severity is None:
          log.warning("%s has no true severity: skipping the oracle ordering", bench.name)
          continue
        per_image_q[name] = -bench.severity
      elif _is_checkpoint(src):
        per_image_q[name] = np.asarray(infer(src, bench, "none")[1], np.float64)
      else:
        table = bm.load_quality_csv(src, bench.root)
        per_image_q[name] = np.array([table.get(k, np.nan) for k in bench.keys])
    results[bench.name] = {}
    for fspec in frs:
      fr_name, src = _spec(fspec)
      if _is_checkpoint(src):
        feats = infer(src, bench, "concat")[0].astype(np.float64)
      elif src == "dlib":  # dlib's 128-d ResNet on the aligned crops (crfiqa_jax.dlib_fr)
        from crfiqa_jax import dlib_fr
        feats = dlib_fr.source_features(bench.source)
      else:
        emb = bm.load_embeddings(src, bench.root)
        dim = len(next(iter(emb.values())))
        feats = np.stack([emb.get(k, np.full(dim, np.nan)) for k in bench.keys])
      ok_img = np.isfinite(feats).all(1)
      for q in per_image_q.values():
        ok_img &= np.isfinite(q)
      keep = ok_img[bench.a] & ok_img[bench.b]
      a, b, gen = bench.a[keep], bench.b[keep], bench.genuine[keep]
      sim = cosine(feats, a, b)
      methods = {k: reports.pair_quality(q[a], q[b], pair_quality)
                 for k, q in per_image_q.items()}
      if any(_spec(q)[1] == "random" for q in qualities):
        methods["random"] = random_pair_qualities(n, a, b, how=pair_quality)
      n_imp = int((~gen).sum())
      usable = [f for f in fmrs if n_imp * FMRS[f] >= 1]
      for f in set(fmrs) - set(usable):
        log.warning("%s/%s: %d impostor pairs are too few for FMR=%s: skipped", bench.name,
                    fr_name, n_imp, f)
      table = erc_table(sim, gen, methods, fmrs=usable, modes=modes,
                        discard_limit=discard_limit)
      where = f"{bench.name}/{fr_name}: "
      standard, curves = reports.standard_table(sim, gen, methods, fmrs=standard_fmrs,
                                                context=where)
      results[bench.name][fr_name] = {
          "pairs_used": int(keep.sum()), "pairs_total": int(len(keep)),
          "genuine_used": int(gen.sum()), "impostor_used": n_imp, "erc": table,
          "standard": standard}
      log.info("%s / %s: %d of %d pairs have every quality and both embeddings", bench.name,
               fr_name, int(keep.sum()), len(keep))
      for mode in table:
        for f in table[mode]:
          reports.plot_erc_single(table[mode][f],
                                  out_dir / bench.name / f"{fr_name}_FMR{f}_{mode}.png",
                                  f"{bench.name} ({fr_name}), FMR={f}, threshold {mode}")
      for f in curves:
        reports.plot_edc_single(
            standard["fmr"][f], curves[f], out_dir / bench.name / f"{fr_name}_FMR{f}_edc.png",
            f"{bench.name} ({fr_name}), FNMR-EDC at FMR={f}", standard["limit"])
  (out_dir / "results.json").write_text(json.dumps(
      {"reject_ratios": erc.RELEASED_RATIOS.tolist(), "discard_limit": discard_limit,
       "pair_quality": pair_quality, "benchmarks": results}, indent=1))
  reports.write_auc_table(results, out_dir / "auc_table.csv")
  reports.write_pauc_table(results, out_dir / "pauc_table.csv")
  return results


def main(argv=None) -> int:
  import sys

  from crfiqa_jax import cli
  p = cli.parser(
      "crfiqa_jax.evaluate",
      "ERC/EDC reports: quality methods × FR models × benchmarks, in the released CR-FIQA "
      "convention and the standard (fiqat) one (REFERENCE §6).\n\nSources are NAME=PATH. "
      "Quality PATH: a checkpoint (workdir, exported dir, .pth, .onnx), a scores CSV, "
      "'random' or 'oracle'. FR PATH: a checkpoint, an .npz of embeddings keyed by image "
      "path, a folder of KEY.npy files, or 'dlib'.",
      "python -m crfiqa_jax.evaluate --benchmark=lfw=data/lfw --quality=crfiqa=crfiqa_l \\\n"
      "    --quality=random=random --fr=arcface=arcface_emb.npz --out=reports/")
  p.add_argument("--benchmark", action="append", required=True,
                 help="prepared dataset folder or folder with pairs.txt (NAME=PATH)")
  p.add_argument("--quality", action="append", required=True)
  p.add_argument("--fr", action="append", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--fmr", default="1e-2,1e-3,1e-4")
  p.add_argument("--modes", default="recomputed,fixed")
  p.add_argument("--discard-limit", type=float, default=None,
                 help="also report the released-grid trapezoidal partial AUC up to this "
                      "reject ratio (the standard table always has pAUC@0.2)")
  p.add_argument("--arch", default=None, help="architecture of .pth checkpoints")
  p.add_argument("--pair-quality", default="min", choices=reports.PAIR_QUALITY,
                 help="pair quality from the two images' qualities")
  args = p.parse_args(argv)
  cli.quiet_logging()
  fmrs = [f.strip() for f in args.fmr.split(",")]

  def body():
    bad = [f for f in fmrs if f not in FMRS] + [m for m in args.modes.split(",")
                                                if m not in erc.MODES]
    if bad:
      raise ValueError(f"unknown FMR/mode {bad}; FMRs {sorted(FMRS)}, modes {erc.MODES}")
    run_report(args.benchmark, args.quality, args.fr, Path(args.out), fmrs=fmrs,
               modes=args.modes.split(","), arch=args.arch, discard_limit=args.discard_limit,
               pair_quality=args.pair_quality)
    print(f"wrote {args.out}/results.json, auc_table.csv, pauc_table.csv and plots",
          file=sys.stderr)

  return cli.run(body)


if __name__ == "__main__":
  raise SystemExit(main())
