"""The benchmark report: every quality source × every FR source × every benchmark.

    python -m crfiqa_jax.evaluate --benchmark=lfw=data/lfw --quality=crfiqa=crfiqa_l \\
        --quality=random=random --fr=arcface=arcface_emb.npz --out=reports/

Benchmarks, scores CSVs and embedding files are read by crfiqa_jax.evaluation.benchmarks; a
model source is run through crfiqa_jax.serve.inference (its quality, or its
flip-concatenated FR features). For each benchmark and FR model, the pairs whose two images
have every quality and both embeddings are compared in the two tables of the pair report
(crfiqa_jax.evaluation.pair_report): the CR-FIQA paper's ERC and fiqat's EDC. Writes
results.json, auc_table.csv, pauc_table.csv and one PNG per benchmark × FR × FMR (×
threshold mode for the ERC).

SIGTERM or SIGINT abandons the report at once with exit code 75: the plots already drawn
stay, the tables and results.json (written only when everything is computed) are not
written; rerunning the command computes the report again.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import numpy as np

from crfiqa_jax import cli, faults
from crfiqa_jax.evaluation import dlib_fr, erc, plots, threshold
from crfiqa_jax.evaluation.benchmarks import load_benchmark, load_embeddings, load_quality_csv
from crfiqa_jax.evaluation.erc import FMRS
from crfiqa_jax.evaluation.pair_report import (PAIR_QUALITY, STANDARD_FMRS, cosine_pairs,
                                               pair_report)
from crfiqa_jax.serve import engines, inference, model_io, registry, report

log = logging.getLogger(__name__)


def _spec(s: str) -> tuple[str, str]:
  """NAME=PATH → (NAME, PATH); a bare PATH is named after its stem."""
  name, sep, src = s.partition("=")
  if not sep:
    return Path(s).stem or s, s
  return name, src


def _abandoned_on_stop(fn):
  """`fn(...)` under stop_on_signal(at_once=True): a stop signal becomes cli.Stopped."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      with faults.stop_on_signal(at_once=True):
        return fn(*args, **kwargs)
    except faults.StopNow as e:
      raise cli.Stopped(f"{e}: the report was abandoned before its tables and results.json "
                        "were written; rerun the same command") from None
  return wrapped


@_abandoned_on_stop
def run_report(benchmarks: list[str], qualities: list[str], frs: list[str], out_dir: Path, *,
               fmrs=tuple(FMRS), modes=erc.MODES, arch: str | None = None,
               discard_limit: float | None = None, batch_size: int = 64,
               pair_quality: str = "min", standard_fmrs=STANDARD_FMRS,
               engine: str = "auto", precision: str = "auto") -> dict:
  """Evaluates every quality source with every FR source on every benchmark; writes into
  `out_dir` results.json with both tables of the pair report ("erc" = released, "standard"
  = fiqat's EDC), auc_table.csv (released AUCs), pauc_table.csv (standard pAUC@0.2, raw and
  minus the theoretical best) and a PNG per benchmark × FR × FMR × mode (released) and per
  benchmark × FR × FMR (standard). Models run on `engine` in `precision`
  (crfiqa_jax.serve.engines)."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  models = _Models(arch, batch_size, engine, precision)
  with_random = any(_spec(q)[1] == "random" for q in qualities)
  results: dict = {}
  for spec in benchmarks:
    bench = load_benchmark(spec)
    per_image_q = _image_qualities(bench, qualities, models)
    results[bench.name] = {}
    for fspec in frs:
      fr_name, src = _spec(fspec)
      feats = _image_features(bench, src, models)
      results[bench.name][fr_name] = _compare(
          bench, fr_name, feats, per_image_q, out_dir, with_random=with_random, fmrs=fmrs,
          modes=modes, discard_limit=discard_limit, pair_quality=pair_quality,
          standard_fmrs=standard_fmrs)
  (out_dir / "results.json").write_text(json.dumps(
      {"reject_ratios": erc.RELEASED_RATIOS.tolist(), "discard_limit": discard_limit,
       "pair_quality": pair_quality, "benchmarks": results}, indent=1))
  plots.write_auc_table(results, out_dir / "auc_table.csv")
  plots.write_pauc_table(results, out_dir / "pauc_table.csv")
  return results


class _Models:
  """Model sources, each loaded once, streamed over a benchmark's images."""

  def __init__(self, arch: str | None, batch_size: int, engine: str = "auto",
               precision: str = "auto"):
    self.arch, self.batch_size, self.engine, self.predictors = arch, batch_size, engine, {}
    self.precision = precision

  def run(self, src: str, bench, features: str):
    """(features, quality) of the benchmark's images with the model at `src`."""
    if src not in self.predictors:  # ERC tables: float32 under auto (engines.choose)
      self.predictors[src] = engines.load_predictor(src, self.arch, self.engine,
                                                     self.precision, exact=True)
    feats, q, failures = inference.extract(
        self.predictors[src], bench.source, features=features, batch_size=self.batch_size,
        dtype=np.float32, desc=f"{bench.name} × {Path(src).name}")
    for i, why in sorted(failures.items())[:20]:
      log.warning("%s: %s: %s (its pairs are left out)", bench.name, bench.keys[i], why)
    return feats, q


def _image_qualities(bench, qualities: list[str], models: _Models) -> dict[str, np.ndarray]:
  """{name: [N] quality per benchmark image (NaN where missing)}; "random" is per pair and
  is drawn later; "oracle" needs the benchmark's true severity."""
  out = {}
  for qspec in qualities:
    name, src = _spec(qspec)
    if src == "random":
      continue
    if src == "oracle":
      if bench.severity is None:
        log.warning("%s has no true severity: skipping the oracle ordering", bench.name)
        continue
      out[name] = -bench.severity
    elif model_io.model_kind(src):
      out[name] = np.asarray(models.run(src, bench, "none")[1], np.float64)
    else:
      table = load_quality_csv(src, bench.root)
      out[name] = np.array([table.get(k, np.nan) for k in bench.keys])
  return out


def _image_features(bench, src: str, models: _Models) -> np.ndarray:
  """[N, D] FR features per benchmark image (NaN rows where missing)."""
  if model_io.model_kind(src):
    return models.run(src, bench, "concat")[0].astype(np.float64)
  if src == "dlib":  # dlib's 128-d ResNet on the aligned crops (an optional extra)
    return dlib_fr.source_features(bench.source)
  emb = load_embeddings(src, bench.root)
  dim = len(next(iter(emb.values())))
  return np.stack([emb.get(k, np.full(dim, np.nan)) for k in bench.keys])


def _compare(bench, fr_name: str, feats, per_image_q: dict, out_dir: Path, *, with_random,
             fmrs, modes, discard_limit, pair_quality, standard_fmrs) -> dict:
  """Both tables for one benchmark and FR model over the pairs with every quality and both
  embeddings; their plots go to out_dir/BENCHMARK/."""
  ok_img = np.isfinite(feats).all(1)
  for q in per_image_q.values():
    ok_img &= np.isfinite(q)
  keep = ok_img[bench.a] & ok_img[bench.b]
  a, b, gen = bench.a[keep], bench.b[keep], bench.genuine[keep]
  log.info("%s / %s: %d of %d pairs have every quality and both embeddings", bench.name,
           fr_name, int(keep.sum()), len(keep))
  sim = cosine_pairs(feats, a, b)
  n_imp = int((~gen).sum())
  usable = [f for f in fmrs if n_imp * FMRS[f] >= 1]
  for f in set(fmrs) - set(usable):
    log.warning("%s/%s: %d impostor pairs are too few for FMR=%s: skipped", bench.name,
                fr_name, n_imp, f)
  rep = pair_report(sim, gen, a, b, per_image_q, n_images=len(bench.keys),
                    random_orderings=5 if with_random else None, how=pair_quality,
                    fmrs=usable, modes=modes, discard_limit=discard_limit,
                    standard_fmrs=standard_fmrs, context=f"{bench.name}/{fr_name}: ")
  table, standard, curves = rep.released, rep.standard, rep.curves
  where = out_dir / bench.name
  for mode in table:
    for f in table[mode]:
      plots.plot_released_single(table[mode][f], where / f"{fr_name}_FMR{f}_{mode}.png",
                                 f"{bench.name} ({fr_name}), FMR={f}, threshold {mode}")
  for f in curves:
    plots.plot_standard_single(standard["fmr"][f], curves[f],
                               where / f"{fr_name}_FMR{f}_edc.png",
                               f"{bench.name} ({fr_name}), FNMR-EDC at FMR={f}",
                               standard["limit"])
  return {"pairs_used": int(keep.sum()), "pairs_total": int(len(keep)),
          "genuine_used": int(gen.sum()), "impostor_used": n_imp, "erc": table,
          "standard": standard}


def discard(args, fmrs) -> None:
  """`--discard=F`: the quality threshold discarding F of each reference set (a benchmark's
  images, else each --quality scores CSV) and, with --fr, the FNMR before and after
  (crfiqa_jax.evaluation.threshold); printed, and written to OUT/threshold.json."""
  if not args.benchmark:
    rows = [threshold.from_scores(*_spec(q), args.discard) for q in args.quality]
  else:
    models, rows = _Models(args.arch, 64, args.engine), []
    for spec in args.benchmark:
      bench = load_benchmark(spec)
      feats = {_spec(f)[0]: _image_features(bench, _spec(f)[1], models) for f in args.fr or []}
      rows += threshold.on_benchmark(bench, _image_qualities(bench, args.quality, models),
                                     feats, args.discard, fmrs, cosine_pairs)
  print(threshold.format_results(rows))
  if args.out:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "threshold.json").write_text(json.dumps(rows, indent=1))


SOURCES_HELP = f"""\
--quality NAME=PATH (repeatable; a bare PATH is named after its file name), PATH one of:
  a model: a training workdir, an exported directory, a released .pth (--arch, or detected),
           an .onnx file, or a released model by name ({', '.join(registry.MODELS)}: weights
           under {registry.LICENCE}, non-commercial; the file goes in $CRFIQA_JAX_HOME)
  a scores CSV: `path,quality` as `score` writes it (or "path quality" lines); paths are
           matched to the benchmark's images relative to its folder, extension dropped
  random:  five random orderings (the baseline every table carries)
  oracle:  the benchmark's true severity (the demo's synthetic data only)
--fr NAME=PATH (repeatable), PATH one of:
  a model (as above): its flip-concatenated embeddings of the benchmark's images
  an .npz of embeddings keyed by image path (matched as the CSV's paths)
  a folder of KEY.npy files, one embedding each (the released layout)
  dlib:    dlib's 128-d ResNet on the aligned crops (the [dlib] extra)
--discard=F: the quality threshold that discards the fraction F of the reference set (the
  benchmark's images, or a --quality scores CSV alone without --benchmark) and, with --fr,
  the FNMR at each --fmr before and after discarding."""


def main(argv=None) -> int:
  p = cli.parser(
      "crfiqa_jax.evaluate",
      "ERC/EDC reports: quality methods × FR models × benchmarks, in the released CR-FIQA "
      "convention (the paper's ERC) and the standard one (fiqat's EDC).\n\nSources are NAME=PATH. "
      "Quality PATH: a checkpoint (workdir, exported dir, .pth, .onnx), a scores CSV, "
      "'random' or 'oracle'. FR PATH: a checkpoint, an .npz of embeddings keyed by image "
      "path, a folder of KEY.npy files, or 'dlib'.",
      "python -m crfiqa_jax.evaluate --benchmark=lfw=data/lfw --quality=crfiqa=crfiqa_l \\\n"
      "    --quality=random=random --fr=arcface=arcface_emb.npz --out=reports/\n"
      "python -m crfiqa_jax.evaluate --quality=crfiqa=reference_scores.csv --discard=0.05")
  p.epilog = f"what the sources accept:\n{SOURCES_HELP}\n\n{p.epilog}"
  p.add_argument("--benchmark", action="append",
                 help="NAME=PATH (repeatable): a prepared dataset folder (its 'test' split's "
                      "pairs) or a folder with pairs.txt; required unless --discard")
  p.add_argument("--quality", action="append", required=True,
                 help="NAME=PATH (repeatable): a model, a scores CSV, random or oracle "
                      "(see below)")
  p.add_argument("--fr", action="append",
                 help="NAME=PATH (repeatable): a model, an .npz keyed by image path, a "
                      "folder of KEY.npy or dlib (see below); required unless --discard")
  p.add_argument("--out", help="folder for results.json, the tables and the plots "
                               "(threshold.json with --discard); required unless --discard")
  p.add_argument("--fmr", default=",".join(FMRS),
                 help=f"comma-separated FMRs of the tables, from {', '.join(FMRS)}")
  p.add_argument("--modes", default="recomputed,fixed",
                 help="released ERC threshold modes: recomputed (per reject ratio, the "
                      "paper's) and/or fixed (set once on all pairs)")
  p.add_argument("--discard-limit", type=float, default=None,
                 help="also report the released-grid trapezoidal partial AUC up to this "
                      "reject ratio (the standard table always has pAUC@0.2)")
  p.add_argument("--arch", default=None, help="architecture of .pth checkpoints")
  engines.add_argument(p)
  p.add_argument("--pair-quality", default="min", choices=PAIR_QUALITY,
                 help="pair quality from the two images' qualities")
  p.add_argument("--discard", type=float, default=None, metavar="F",
                 help="print the quality threshold that discards the fraction F of the "
                      "reference set and, with --fr, the FNMR at each --fmr before and after")
  p.add_argument("--report", default=None, metavar="PAGE.html",
                 help="also write one self-contained HTML page of the run: its ERC/EDC "
                      "plots and tables")
  args = p.parse_args(argv)
  cli.quiet_logging()
  fmrs = [f.strip() for f in args.fmr.split(",")]

  def body():
    bad = [f for f in fmrs if f not in FMRS] + [m for m in args.modes.split(",")
                                                if m not in erc.MODES]
    if bad:
      raise ValueError(f"unknown FMR/mode {bad}; FMRs {sorted(FMRS)}, modes {erc.MODES}")
    if args.discard is not None:
      discard(args, fmrs)
      return
    missing = [f for f in ("benchmark", "fr", "out") if not getattr(args, f)]
    if missing:
      raise ValueError(f"--{', --'.join(missing)} required (only --discard runs without)")
    run_report(args.benchmark, args.quality, args.fr, Path(args.out), fmrs=fmrs,
               modes=args.modes.split(","), arch=args.arch, discard_limit=args.discard_limit,
               pair_quality=args.pair_quality, engine=args.engine,
               precision=args.precision)
    print(f"wrote {args.out}/results.json, auc_table.csv, pauc_table.csv and plots",
          file=sys.stderr)
    if args.report:
      report.write_evaluate_page(args.report, args.out, command=" ".join(
          [cli.prog("crfiqa_jax.evaluate"), *(sys.argv[1:] if argv is None else argv)]))
      print(f"wrote {args.report}", file=sys.stderr)

  return cli.run(body)
