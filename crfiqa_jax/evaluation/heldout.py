"""The main job's held-out report, after training, on config.eval_data_dir's "test" split.

Two kinds, told apart by the split (`report_kind`):
  synthetic  the demo's: unseen synthetic identities with a known degradation severity per
             image; every pair of its images; the learned quality against a random ordering
             and the oracle (the true severity). Writes scores.csv, metrics.json (both tables
             of crfiqa_jax.evaluation.pair_report), erc.png and edc.png; `print_summary`
             puts the numbers a user reads first on stdout.
  pairs      real faces: a verification split with stored pairs (`prepare celeba`, `prepare
             bin`), no severity; the learned quality against no-training baselines and other
             models under several FR models (crfiqa_jax.evaluation.realfaces).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from crfiqa_jax import models
from crfiqa_jax.data import pairs, sources
from crfiqa_jax.data.records import RecordSource, read_info
from crfiqa_jax.evaluation import erc, plots, realfaces
from crfiqa_jax.evaluation.pair_report import cosine_pairs, pair_report
from crfiqa_jax.serve import inference, model_io

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

  metrics.json carries both tables (crfiqa_jax.evaluation.pair_report): "released" (the
  CR-FIQA paper's ERC; its AUCs also as "erc_auc", its FNMRs as "erc_fnmr") and "standard"
  (fiqat's EDC).
  """
  a, b, genuine = pairs.all_pairs(labels)
  sim = cosine_pairs(features, a, b)
  rep = pair_report(sim, genuine, a, b, {"learned": quality, "oracle": -severity},
                    n_images=len(labels), random_orderings=random_orderings, seed=seed,
                    how=pair_quality, context="demo: ")
  table = rep.released
  metrics = {
      "spearman_quality_vs_severity": spearman(quality, severity),
      "spearman_by_kind": ({k: spearman(quality[kinds == k], severity[kinds == k])
                            for k in sorted(set(kinds))} if kinds is not None else {}),
      "erc_auc": {mode: {f: {m: table[mode][f][m]["auc"] for m in table[mode][f]}
                         for f in table[mode]} for mode in table},
      "erc_fnmr": {mode: {f: {m: table[mode][f][m]["fnmr"] for m in table[mode][f]}
                          for f in table[mode]} for mode in table},
      "reject_ratios": erc.RELEASED_RATIOS.tolist(),
      "released": table, "standard": rep.standard,
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
  plots.plot_released(table, out_dir / "erc.png", title=title)
  plots.plot_standard(rep.standard, rep.curves, out_dir / "edc.png", title=title)
  return metrics


def report_kind(data_dir) -> str:
  """"pairs" (a verification split with stored pairs) or "synthetic" (severities); raises,
  naming --config.eval_data_dir, when data_dir has no "test" split."""
  if not Path(data_dir).exists():
    raise FileNotFoundError(f"--config.eval_data_dir={data_dir} does not exist")
  info = read_info(data_dir)
  if "test" not in info["splits"]:
    raise ValueError(f"--config.eval_data_dir={data_dir} has no 'test' split (it has "
                     f"{sorted(info['splits'])}): give it a `prepare celeba`, `prepare bin` or "
                     "`prepare synthetic` output, or none to skip the held-out report")
  return "pairs" if pairs.has_pairs(data_dir, "test") else "synthetic"


def check(data_dir, image_size: int):
  """Raises now, not after training, naming --config.eval_data_dir, if data_dir cannot
  serve its kind of report to a model of input size image_size."""
  if report_kind(data_dir) == "pairs":
    realfaces.check(data_dir, "test")
  else:
    check_eval_data(data_dir, "test")
  images = sources.records_source(data_dir, "test", image_size=image_size)
  try:
    if len(images):
      images.load(0)
  except sources.SkipImage as e:
    raise ValueError(f"--config.eval_data_dir={data_dir}: {e}; the held-out report needs "
                     f"square crops of at least {image_size} pixels (the model's "
                     "image_size)") from None


def report(state, config, out_dir: Path, *, started: float | None = None):
  """The held-out report of its kind into out_dir, summary on stdout (process 0)."""
  if report_kind(config.eval_data_dir) == "pairs":
    return realfaces.evaluate_state(state, config, out_dir, started=started)
  m = evaluate_checkpoint_state(state, config, out_dir, started=started)
  if m is not None:
    print_summary(m, out_dir)
  return m


def check_eval_data(data_dir, split: str = "test"):
  """(labels, metadata) of the held-out split; raises now, not after training, naming
  --config.eval_data_dir, if `data_dir` cannot serve the report."""
  fix = ("set --config.eval_data_dir to `prepare synthetic` data, or to none to skip the "
         "held-out report")
  try:
    labels, meta = RecordSource(data_dir, split).labels_and_metadata()
  except (ValueError, FileNotFoundError) as e:
    raise ValueError(f"--config.eval_data_dir={data_dir}: {e} ({fix})") from None
  if not len(labels):
    raise ValueError(f"--config.eval_data_dir={data_dir} has an empty {split!r} split "
                     f"({fix})")
  if any("severity" not in m for m in meta):
    raise ValueError(f"--config.eval_data_dir={data_dir}: its {split!r} split lacks "
                     "per-image 'severity' metadata, which the demo's held-out report needs "
                     f"({fix})")
  return labels, meta


def evaluate_checkpoint_state(state, config, out_dir: Path, *, started: float | None = None):
  """Evaluates a trained state on config.eval_data_dir's "test" split (synthetic layout).

  Streams the split through every local device; on several processes each takes a slice
  and gathers the results; process 0 writes the report and returns its metrics, the others
  return None."""
  t0 = time.perf_counter()
  labels, meta = check_eval_data(config.eval_data_dir, "test")
  model = models.create_model(config.model, embedding_dim=config.embedding_dim)
  predictor = inference.FlaxPredictor(model, model_io.inference_variables(state),
                                      image_size=config.image_size)
  feats, quality, failures = inference.extract(
      predictor, sources.records_source(config.eval_data_dir, "test",
                                        image_size=config.image_size),
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


def print_summary(m: dict, out_dir: Path):
  """The held-out numbers on stdout: Spearman, released ERC AUCs, standard EDC pAUCs."""
  auc = m["erc_auc"]
  lines = [
      "",
      f"Held-out evaluation ({m['num_identities']} unseen identities, {m['num_images']} images, "
      f"{m['num_pairs']:,} pairs) after {m['train_steps']} steps, {m['wall_seconds']:.0f} s:",
      f"  Spearman(predicted quality, true degradation severity) = "
      f"{m['spearman_quality_vs_severity']:+.3f}  (-1 = perfect, 0 = no relation)",
  ]
  for mode in auc:
    for f, r in auc[mode].items():
      gain = 1 - r["learned"] / r["random"] if r["random"] else float("nan")
      lines.append(f"  ERC AUC [{mode:10s} FMR={f}] learned {r['learned']:.4f}  random "
                   f"{r['random']:.4f}  oracle {r['oracle']:.4f}  → {100 * gain:.0f}% below "
                   "random")
  for f, by_m in m.get("standard", {}).get("fmr", {}).items():
    r = {k: by_m[k] for k in ("learned", "random", "oracle") if k in by_m}
    lines.append(f"  EDC pAUC@{m['standard']['limit']} [standard   FMR={f}] " + "  ".join(
        f"{k} {v['pauc']:.4f} (−best {v['pauc_minus_best']:.4f})" for k, v in r.items()))
  lines.append(f"  Lower AUC = rejecting the lowest-quality pairs removes more errors. "
               f"Plot: {out_dir / 'erc.png'}; numbers: {out_dir / 'metrics.json'}")
  print("\n".join(lines), flush=True)
