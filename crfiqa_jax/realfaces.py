"""The held-out report on real faces: verification pairs of unseen identities.

Real photos carry no degradation severity, so quality is judged the way the CR-FIQA paper
judges it: by how well rejecting the lowest-quality pairs lowers a face recognition (FR)
model's false non-match rate (ERC; both of crfiqa_jax.reports' tables), on every pair of
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

from crfiqa_jax import checkpoints, dlib_fr, inference, models, reports
from crfiqa_jax.data.records import RecordSource, decode_image, read_info
from crfiqa_jax.inference import ImageSource, SkipImage
from crfiqa_jax.input_pipeline import fit_image

log = logging.getLogger(__name__)

METADATA_BASELINES = {"face_size": "eye_distance", "detector": "det_score",
                      "sharpness": "sharpness"}


def read_pairs(data_dir, split: str = "test"):
  """(metadata per image, a, b, genuine) of a verification split, no image decoded."""
  _, meta = RecordSource(data_dir, split).labels_and_metadata()
  pairs = read_info(data_dir).get(f"{split}_pairs")
  if not isinstance(pairs, list) or not pairs:
    raise ValueError(f"eval_data_dir {data_dir} split {split!r} has no verification pairs "
                     "(metadata 'test_pairs'): use `prepare celeba` or `prepare bin` output "
                     "for --config.eval_data_dir")
  arr = np.asarray(pairs, np.int64).reshape(-1, 3)
  if arr[:, :2].max() >= len(meta) or arr[:, :2].min() < 0:
    raise ValueError(f"{data_dir}: pair indices out of range for {len(meta)} images")
  return meta, arr[:, 0], arr[:, 1], arr[:, 2].astype(bool)


def records_at(data_dir, split: str, size: int | None):
  """The split's images as an inference.ImageSource, resized to size × size when they are
  larger (as training does: input_pipeline.fit_image), without a warning per image."""
  src = RecordSource(data_dir, split)

  def load(i):
    try:
      img = decode_image(src[i]["image"])
    except Exception as e:  # one bad record is reported per image, never fatal
      raise SkipImage(f"record {i}: undecodable ({type(e).__name__}: {e})") from None
    return img if size is None or img.shape[:2] == (size, size) else fit_image(img, size)

  return ImageSource(load, len(src), lambda i: f"{data_dir}[{split}][{i}]")


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
      predictor, records_at(data_dir, split, predictor.image_size), features=features,
      batch_size=batch_size, desc=desc)
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
    if not Path(path).exists():
      raise FileNotFoundError(f"--config.compare_quality: {path} does not exist")
    predictor = checkpoints.load_predictor(path)
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
  feats = dlib_fr.source_features(records_at(data_dir, split, 112))
  try:
    cache.parent.mkdir(exist_ok=True)
    np.save(cache, feats)
  except OSError as e:  # a read-only dataset: compute again next time
    log.info("dlib descriptors not cached (%s)", e)
  return feats


def cosine_pairs(feats: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  fa, fb = feats[a].astype(np.float64), feats[b].astype(np.float64)
  return np.einsum("ij,ij->i", fa, fb) / (np.linalg.norm(fa, axis=1) *
                                         np.linalg.norm(fb, axis=1))


def pairs_report(similarities: dict[str, np.ndarray], genuine, a, b,
                 qualities: dict[str, np.ndarray], *, out_dir: Path, title: str,
                 pair_quality: str = "min", random_orderings: int = 5, seed: int = 0) -> dict:
  """ERC tables of every quality method under every FR model, plots and metrics.json.

  similarities: FR name → cosine [P] per pair; qualities: method → image quality [N]
  ("random" is added). Returns the metrics: per FR model the released table (ERC AUC,
  recomputed and fixed thresholds, FMR 1e-2 and 1e-3) and the standard one (FNMR-EDC
  pAUC@0.2 at FMR 1e-3 and 1e-4), and `summary[fr][method]` with the headline numbers.
  """
  n = len(next(iter(qualities.values())))
  methods = {k: reports.pair_quality(q[a], q[b], pair_quality) for k, q in qualities.items()}
  methods["random"] = reports.random_pair_qualities(n, a, b, orderings=random_orderings,
                                                    seed=seed, how=pair_quality)
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics = {"num_pairs": int(len(a)), "num_genuine_pairs": int(np.sum(genuine)),
             "num_images": int(n), "pair_quality": pair_quality, "fr": {}, "summary": {}}
  for fr, sim in similarities.items():
    table = reports.erc_table(sim, genuine, methods)
    standard, curves = reports.standard_table(sim, genuine, methods, context=f"{fr}: ")
    metrics["fr"][fr] = {"released": table, "standard": standard}
    metrics["summary"][fr] = {
        m: {**{f"erc_auc_{f}": table["recomputed"][f][m]["auc"] for f in ("1e-2", "1e-3")},
            **{f"pauc_{f}": standard["fmr"][f][m]["pauc"] for f in standard["fmr"]}}
        for m in methods}
    t = f"{title} — FR: {fr}"
    reports.plot_erc(table, out_dir / f"erc_{fr}.png", title=t)
    reports.plot_standard(standard, curves, out_dir / f"edc_{fr}.png", title=t)
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
  meta, a, b, genuine = read_pairs(config.eval_data_dir)
  model = models.create_model(config.model, embedding_dim=config.embedding_dim)
  predictor = inference.FlaxPredictor(model, inference.inference_variables(state),
                                      image_size=config.image_size)
  feats, quality = model_outputs(predictor, config.eval_data_dir,
                                 batch_size=config.get("eval_batch_size", 256))
  qualities = {"learned": quality, **metadata_baselines(meta),
               **compare_qualities(config.get("compare_quality", ""), config.eval_data_dir)}
  sims = {"own": cosine_pairs(feats, a, b)}
  dlib = dlib_features(config.eval_data_dir)
  if dlib is not None:
    sims["dlib"] = cosine_pairs(dlib, a, b)
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
