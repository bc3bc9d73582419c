"""Training-set analysis (paper Fig. 1 right and Fig. 2): CCS, NNCCS and CR of every
training sample against the learned class centres, their distributions, and the ERC when
each of them is used as the quality of pairs drawn from that set.

    python -m crfiqa_jax.analyze --checkpoint=WORKDIR --data=DATASET [--out=DIR] [--pairs=N]

WORKDIR is a training workdir (the class centres live only there). Writes DIR/samples.csv
(index,label,ccs,nnccs,cr), DIR/distributions.png, DIR/erc.png and DIR/analysis.json.
Pairs: up to N genuine and N impostor pairs drawn uniformly (seeded) from the set; the
counts are reported. Quality per pair = min of the two images; for NNCCS, where a higher
value means a closer negative class, −NNCCS is used so that higher = better for all three.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from crfiqa_jax import cli, models
from crfiqa_jax.data.records import RecordSource, read_info
from crfiqa_jax.data.sources import records_source
from crfiqa_jax.evaluation import plots
from crfiqa_jax.evaluation.erc import FMRS
from crfiqa_jax.evaluation.pair_report import erc_table
from crfiqa_jax.models import losses
from crfiqa_jax.serve import engines, inference, model_io

log = logging.getLogger(__name__)


def load_workdir(path: str | Path):
  """(model, inference variables, centres [D, C_padded], config dict) of a training workdir."""
  if model_io.model_kind(path) != "workdir":
    raise FileNotFoundError(f"--checkpoint {path} is not a training workdir (no "
                            f"{model_io.CONFIG_FILE}): the class centres needed here exist "
                            "only in training checkpoints")
  model, variables, info = model_io.load_model(path)
  return model, variables, info["centres"], info["config"]


def sample_stats(embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray,
                 num_classes: int, cr_form: str = "paper", chunk: int = 4096):
  """(ccs, nnccs, cr) per sample against the first `num_classes` centres."""
  w = models.l2_normalize(centres[:, :num_classes], axis=0)
  x = models.l2_normalize(embeddings, axis=1)
  out = []
  for s in range(0, len(x), chunk):
    cos = np.clip(x[s:s + chunk] @ w, -1, 1)
    out.append([np.asarray(v) for v in losses.certainty_ratio(cos, labels[s:s + chunk],
                                                               form=cr_form)])
  cr, ccs, nnccs = (np.concatenate([o[i] for o in out]) for i in range(3))
  return ccs, nnccs, cr


def sample_pairs(labels: np.ndarray, n: int, seed: int = 0):
  """Up to n genuine and n impostor pairs (a, b, genuine) with a < b, each set drawn
  uniformly without repeats from all genuine / all impostor pairs of the set.

  Genuine: a class is picked with probability ∝ its number of pairs, then a uniform pair
  in it. Impostor: uniform pairs of distinct images, rejected when the labels agree.
  """
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels)
  order = np.argsort(labels, kind="stable")
  _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  per_class = counts * (counts - 1) // 2
  n_gen_total, n_all = int(per_class.sum()), len(labels) * (len(labels) - 1) // 2
  gen = _draw(rng, min(n, n_gen_total), lambda k: _genuine(rng, k, order, starts, counts,
                                                           per_class))
  n_imp_total = n_all - n_gen_total
  imp = _draw(rng, min(n, n_imp_total), lambda k: _impostor(rng, k, labels))
  a = np.r_[gen[:, 0], imp[:, 0]]
  b = np.r_[gen[:, 1], imp[:, 1]]
  genuine = np.r_[np.ones(len(gen), bool), np.zeros(len(imp), bool)]
  return a, b, genuine


def _draw(rng, n: int, propose) -> np.ndarray:
  """n distinct pairs [n, 2] from `propose(k)` (k candidate pairs, possibly repeated)."""
  got = np.zeros((0, 2), np.int64)
  for _ in range(100):
    if len(got) >= n:
      break
    cand = propose(2 * (n - len(got)) + 16)
    got = np.unique(np.concatenate([got, cand]), axis=0)
  if len(got) > n:  # keep a uniform subset, not the smallest indices
    got = got[np.sort(rng.choice(len(got), n, replace=False))]
  return got


def _genuine(rng, k, order, starts, counts, per_class):
  c = rng.choice(len(counts), k, p=per_class / per_class.sum())
  i = rng.integers(0, counts[c])
  j = rng.integers(0, counts[c] - 1)
  j = j + (j >= i)  # a second, different member of the class
  x, y = order[starts[c] + i], order[starts[c] + j]
  return np.stack([np.minimum(x, y), np.maximum(x, y)], 1)


def _impostor(rng, k, labels):
  x = rng.integers(0, len(labels), k)
  y = rng.integers(0, len(labels), k)
  keep = labels[x] != labels[y]
  x, y = x[keep], y[keep]
  return np.stack([np.minimum(x, y), np.maximum(x, y)], 1)


def analyze(workdir, data, out_dir, *, pairs: int = 50_000, batch_size: int = 256,
            split: str = "train", engine: str = "auto", precision: str = "auto") -> dict:
  """Streams `data` through the model once; keeps per-image CCS/NNCCS/CR and only the
  embeddings of images in the sampled pairs (memory independent of the set's size)."""
  model, variables, centres, cfg = load_workdir(workdir)
  num_classes = int(read_info(data).get("num_classes", 0))
  labels = RecordSource(data, split).labels_and_metadata()[0]
  if labels.max() >= num_classes or num_classes > centres.shape[1]:
    raise ValueError(f"{data} has {num_classes} classes; the checkpoint has "
                     f"{centres.shape[1]} centres: not the training set of this model")
  a, b, gen = sample_pairs(labels, pairs)
  needed = np.unique(np.r_[a, b])
  row = np.full(len(labels), -1, np.int64)
  row[needed] = np.arange(len(needed))
  feats = np.full((len(needed), model.embedding_dim), np.nan, np.float32)
  ccs, nnccs, cr = (np.full(len(labels), np.nan) for _ in range(3))
  predictor = engines.make_predictor(
      model, variables, {"arch": cfg["model"], "embedding_dim": cfg["embedding_dim"],
                         "image_size": cfg["image_size"]}, engine=engine, precision=precision,
      exact=True, source=workdir)
  source = records_source(data, split)
  for bt in inference.stream(predictor, source, batch_size=batch_size, desc="analyze"):
    if not len(bt.indices):
      continue
    i = bt.indices
    ccs[i], nnccs[i], cr[i] = sample_stats(bt.embedding, labels[i], centres, num_classes,
                                           cfg.get("cr_form", "paper"))
    sel = row[i] >= 0
    feats[row[i[sel]]] = models.l2_normalize(bt.embedding[sel])
  ok = np.isfinite(cr)
  if not ok.all():
    log.warning("%d images could not be decoded and are left out", int((~ok).sum()))
  keep = ok[a] & ok[b]
  a, b, gen = a[keep], b[keep], gen[keep]
  sim = np.einsum("ij,ij->i", feats[row[a]], feats[row[b]])
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "samples.csv", "w") as f:
    f.write("index,label,ccs,nnccs,cr\n")
    for i in range(len(labels)):
      f.write(f"{i},{labels[i]},{ccs[i]:.6f},{nnccs[i]:.6f},{cr[i]:.6f}\n")
  _plot_distributions(ccs[ok], nnccs[ok], cr[ok], out / "distributions.png")
  methods = {"CR": np.minimum(cr[a], cr[b]), "CCS": np.minimum(ccs[a], ccs[b]),
             "-NNCCS": np.minimum(-nnccs[a], -nnccs[b])}
  fmrs = [f for f in FMRS if (~gen).sum() * FMRS[f] >= 1]
  if not fmrs or not gen.any():
    raise ValueError(f"{len(gen)} pairs ({int(gen.sum())} genuine) are too few for an ERC; "
                     "raise --pairs or use a larger dataset")
  table = erc_table(sim, gen, methods, fmrs=fmrs)
  plots.plot_released(table, out / "erc.png",
                    title=f"Training set: {int(gen.sum()):,} genuine / {int((~gen).sum()):,} "
                          "impostor pairs")
  result = {"num_samples": int(len(labels)), "genuine_pairs": int(gen.sum()),
            "impostor_pairs": int((~gen).sum()),
            "mean": {"ccs": float(np.nanmean(ccs)), "nnccs": float(np.nanmean(nnccs)),
                     "cr": float(np.nanmean(cr))},
            "erc_auc": {m: {f: {k: v["auc"] for k, v in t.items()} for f, t in by.items()}
                        for m, by in table.items()}}
  (out / "analysis.json").write_text(json.dumps(result, indent=1))
  return result


def _plot_distributions(ccs, nnccs, cr, path):
  fig = Figure(figsize=(9, 3.6))
  axes = fig.subplots(1, 2)
  bins = np.linspace(-1, 1, 81)
  axes[0].hist(ccs, bins, alpha=0.6, label="CCS")
  axes[0].hist(nnccs, bins, alpha=0.6, label="NNCCS")
  axes[0].set_xlabel("cosine similarity")
  axes[0].legend()
  axes[1].hist(cr, 80, color="tab:purple")
  axes[1].set_xlabel("CR")
  for ax in axes:
    ax.set_ylabel("samples")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> int:
  p = cli.parser("crfiqa_jax.analyze", __doc__,
                 "python -m crfiqa_jax.analyze --checkpoint=runs/crfiqa_s --data=/data/casia")
  p.add_argument("--checkpoint", required=True, help="training workdir")
  p.add_argument("--data", required=True, help="the training dataset (prepare output)")
  p.add_argument("--out", default=None, help="default: CHECKPOINT/analysis")
  p.add_argument("--pairs", type=int, default=50_000,
                 help="genuine and impostor pairs (each) drawn for the ERCs")
  p.add_argument("--batch-size", type=int, default=256, help="images per forward")
  engines.add_argument(p)
  args = p.parse_args(argv)
  cli.quiet_logging()

  def body():
    r = analyze(args.checkpoint, args.data, args.out or Path(args.checkpoint) / "analysis",
                pairs=args.pairs, batch_size=args.batch_size, engine=args.engine,
                precision=args.precision)
    print(json.dumps(r, indent=1))

  return cli.run(body)
