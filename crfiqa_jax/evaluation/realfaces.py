"""The held-out report on real faces: verification pairs of unseen identities.

Real photos carry no degradation severity, so quality is judged the way the CR-FIQA paper
judges it: by how well rejecting the lowest-quality pairs lowers a face recognition (FR)
model's false non-match rate (both tables of crfiqa_jax.evaluation.pair_report), on every pair of
the held-out split (`prepare celeba` writes one: whole identities, all genuine pairs and
sampled impostor pairs; `prepare bin` sets work too).

Every result has something to beat, on the same pairs and with the same FR models:
  random       uniform random image qualities (mean of 5 orderings);
  face_size    inter-eye distance in the original photo (metadata `eye_distance`);
  detector     the face detector's confidence (metadata `det_score`);
  sharpness    variance of the Laplacian of the aligned crop (metadata `sharpness`);
  NAME         any other trained model (`compare_quality` = "NAME=PATH,..."), e.g. the demo
               model trained on synthetic faces only, each scored at its own input size.
A baseline whose metadata is missing for some image is left out (logged).

FR models: the trained model's own embeddings (the released evaluation's feature: image and
mirror, L2-normalised and concatenated) and, with the [dlib] extra, dlib's ResNet — an FR
model other than the one that learned the quality, as the paper's cross-model evaluation.
dlib's descriptors of a split are cached beside it (`<data_dir>/fr_cache/`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import numpy as np

from crfiqa_jax import models
from crfiqa_jax.data import pairs, sources
from crfiqa_jax.data.records import RecordSource
from crfiqa_jax.evaluation import dlib_fr, plots
from crfiqa_jax.evaluation.pair_report import RELEASED_FMRS, cosine_pairs, pair_report
from crfiqa_jax.serve import engines, inference, model_io

log = logging.getLogger(__name__)

METADATA_BASELINES = {"face_size": "eye_distance", "detector": "det_score",
                      "sharpness": "sharpness"}


def check(data_dir, split: str = "test"):
  """Raises now, not after training, naming --config.eval_data_dir, when the split has no
  usable pairs."""
  try:
    pairs.read_pairs(data_dir, split)
  except ValueError as e:
    raise ValueError(f"--config.eval_data_dir: {e}") from None


def metadata_baselines(meta: list[dict]) -> dict[str, np.ndarray]:
  """The no-training image qualities present for every image (higher = better)."""
  out = {}
  for name, key in METADATA_BASELINES.items():
    vals = [m.get(key) for m in meta]
    if all(v is not None for v in vals):
      out[name] = np.asarray(vals, np.float64)
    else:
      log.info("baseline %s left out: %d of %d images lack '%s'", name,
               sum(v is None for v in vals), len(vals), key)
  return out


def model_outputs(predictor, data_dir, split: str = "test", *, batch_size: int = 128,
                  features: str = "concat", desc: str = "held-out faces"):
  """(features or None, quality [N]) of a predictor over the split at its input size; a
  failed image is an error here (the split was checked when it was written)."""
  feats, quality, failures = inference.extract(
      predictor, sources.records_source(data_dir, split, image_size=predictor.image_size),
      features=features, batch_size=batch_size, desc=desc)
  if failures:
    raise ValueError(f"{len(failures)} held-out images could not be read, e.g. "
                     f"{next(iter(failures.values()))}")
  return feats, quality.astype(np.float64)


def compare_qualities(spec: str, data_dir, split: str = "test") -> dict[str, np.ndarray]:
  """"NAME=PATH,..." → {NAME: quality [N]} of each model (any path `score` accepts)."""
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--config.compare_quality: expected NAME=PATH, got {item!r}")
    try:
      model_io.kind_of_existing(path)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"--config.compare_quality: {e}") from None
    predictor = engines.load_predictor(path, exact=True)  # a printed table: fp32 under auto
    _, out[name] = model_outputs(predictor, data_dir, split, features="none", desc=name)
  return out


def dlib_features(data_dir, split: str = "test") -> np.ndarray | None:
  """dlib descriptors [N, 128] of the split (cached beside it), or None without [dlib]."""
  try:
    dlib_fr.model_dir()
  except (ImportError, ValueError) as e:
    log.info("dlib FR model left out: %s", e)
    return None
  n = len(RecordSource(data_dir, split))
  cache = Path(data_dir) / "fr_cache" / f"dlib_{split}_{n}.npy"
  if cache.exists():
    return np.load(cache, allow_pickle=False)
  feats = dlib_fr.source_features(sources.records_source(data_dir, split, image_size=112))
  try:
    cache.parent.mkdir(exist_ok=True)
    np.save(cache, feats)
  except OSError as e:  # a read-only dataset: compute again next time
    log.info("dlib descriptors not cached (%s)", e)
  return feats


def pairs_report(similarities: dict[str, np.ndarray], genuine, a, b,
                 qualities: dict[str, np.ndarray], *, out_dir: Path, title: str,
                 pair_quality: str = "min", random_orderings: int = 5, seed: int = 0) -> dict:
  """The pair report of every quality method under every FR model, plots and metrics.json.

  similarities: FR name → cosine [P] per pair; qualities: method → image quality [N]
  ("random" is added). Returns the metrics: per FR model the released table (ERC AUC,
  recomputed and fixed thresholds, FMR 1e-2 and 1e-3) and the standard one (FNMR-EDC
  pAUC@0.2 at FMR 1e-3 and 1e-4), and `summary[fr][method]` with the headline numbers.
  """
  n = len(next(iter(qualities.values())))
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics = {"num_pairs": int(len(a)), "num_genuine_pairs": int(np.sum(genuine)),
             "num_images": int(n), "pair_quality": pair_quality, "fr": {}, "summary": {}}
  for fr, sim in similarities.items():
    rep = pair_report(sim, genuine, a, b, qualities, n_images=n,
                      random_orderings=random_orderings, seed=seed, how=pair_quality,
                      context=f"{fr}: ")
    table, standard = rep.released, rep.standard
    metrics["fr"][fr] = {"released": table, "standard": standard}
    metrics["summary"][fr] = {
        m: {**{f"erc_auc_{f}": table["recomputed"][f][m]["auc"] for f in RELEASED_FMRS},
            **{f"pauc_{f}": standard["fmr"][f][m]["pauc"] for f in standard["fmr"]}}
        for m in table["recomputed"][RELEASED_FMRS[0]]}
    t = f"{title} — FR: {fr}"
    plots.plot_released(table, out_dir / f"erc_{fr}.png", title=t)
    plots.plot_standard(standard, rep.curves, out_dir / f"edc_{fr}.png", title=t)
  (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
  return metrics


def summary_lines(metrics: dict) -> list[str]:
  """A table per FR model: each method's ERC AUC and pAUC, and its ratio to random."""
  lines = []
  for fr, by_m in metrics["summary"].items():
    cols = list(next(iter(by_m.values())))
    lines.append(f"  FR {fr}: " + "  ".join(f"{c:>14s}" for c in cols) + "   (lower is better; "
                 "÷ random in brackets)")
    rnd = by_m["random"]
    for m, v in sorted(by_m.items(), key=lambda kv: kv[1][cols[0]]):
      lines.append(f"  {m:>14s} " + "  ".join(
          f"{v[c]:.4f} ({v[c] / rnd[c]:.2f})" if rnd[c] else f"{v[c]:.4f}" for c in cols))
  return lines


def write_scores(path: Path, meta: list[dict], qualities: dict[str, np.ndarray]):
  """CSV: file, identity and every image quality (the learned one as `quality`)."""
  names = list(qualities)
  with open(path, "w") as f:
    f.write("file,identity," + ",".join(names) + "\n")
    for i, m in enumerate(meta):
      f.write(f"{m.get('file', i)},{m.get('identity', '')}," +
              ",".join(f"{qualities[k][i]:.6f}" for k in names) + "\n")


def evaluate_state(state, config, out_dir: Path, *, started: float | None = None):
  """The trained state's report on config.eval_data_dir's "test" pairs into out_dir (process
  0 writes it and returns the metrics; the others return None)."""
  t0 = time.perf_counter()
  _, meta = RecordSource(config.eval_data_dir, "test").labels_and_metadata()
  a, b, genuine = pairs.read_pairs(config.eval_data_dir, "test")
  model = models.create_model(config.model, embedding_dim=config.embedding_dim)
  predictor = inference.FlaxPredictor(model, model_io.inference_variables(state),
                                      image_size=config.image_size)
  feats, quality = model_outputs(predictor, config.eval_data_dir,
                                 batch_size=config.get("eval_batch_size", 256))
  qualities = {"learned": quality, **metadata_baselines(meta),
               **compare_qualities(config.get("compare_quality", ""), config.eval_data_dir)}
  sims = {"own": cosine_pairs(feats.astype(np.float64), a, b)}
  dlib = dlib_features(config.eval_data_dir)
  if dlib is not None:
    sims["dlib"] = cosine_pairs(dlib.astype(np.float64), a, b)
  if jax.process_index() != 0:
    return None
  out_dir = Path(out_dir)
  m = pairs_report(sims, genuine, a, b, qualities, out_dir=out_dir,
                   title=f"Held-out identities: {len(a):,} pairs ({int(genuine.sum()):,} genuine)")
  m["train_steps"] = int(np.asarray(inference.host_local(state.step)))
  m["wall_seconds"] = time.perf_counter() - (started if started is not None else t0)
  (out_dir / "metrics.json").write_text(json.dumps(m, indent=1))
  write_scores(out_dir / "scores.csv", meta, qualities)
  print("\n".join([f"\nHeld-out real faces ({m['num_images']} images, {m['num_pairs']:,} pairs, "
                   f"{m['num_genuine_pairs']:,} genuine) after {m['train_steps']} steps, "
                   f"{m['wall_seconds']:.0f} s:"] + summary_lines(m) +
                  [f"  Plots and numbers: {out_dir}"]), flush=True)
  return m
