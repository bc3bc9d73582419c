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

from crfiqa_jax import erc

log = logging.getLogger(__name__)

FMRS = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}


def extract(predict, variables, images: np.ndarray, *, batch_size: int = 256, flip: bool = True):
  """Runs `predict(variables, uint8 [B,H,W,3]) → (emb, quality)` over `images`.

  Returns (features [N, 2D] (or [N, D] without flip), each half L2-normalised; quality [N]).
  The last batch is padded to `batch_size` so the jitted function compiles once.
  """
  feats, quals = [], []
  n = len(images)
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    emb, q = predict(variables, chunk)
    parts = [np.asarray(emb)]
    if flip:
      emb_f, _ = predict(variables, np.ascontiguousarray(chunk[:, :, ::-1]))
      parts.append(np.asarray(emb_f))
    parts = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts]
    feats.append(np.concatenate(parts, 1)[:len(chunk) - pad])
    quals.append(np.asarray(q)[:len(chunk) - pad])
  return np.concatenate(feats), np.concatenate(quals)


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


def erc_table(similarity, genuine, pair_qualities: dict[str, np.ndarray], *,
              fmrs=("1e-2", "1e-3"), modes=erc.MODES, reject_ratios=None) -> dict:
  """{mode: {fmr: {method: {"fnmr": [...], "auc": float}}}} for every quality method."""
  ratios = erc.RELEASED_RATIOS if reject_ratios is None else np.asarray(reject_ratios)
  out = {}
  for mode in modes:
    out[mode] = {}
    for f in fmrs:
      out[mode][f] = {}
      for name, q in pair_qualities.items():
        fnmr = erc.error_versus_reject(similarity, genuine, q, fmr=FMRS[f],
                                       reject_ratios=ratios, threshold=mode)
        out[mode][f][name] = {"fnmr": fnmr.tolist(), "auc": erc.erc_auc(ratios, fnmr)}
  return out


def plot_erc(table: dict, path: Path, *, title: str, reject_ratios=None):
  """One panel per (mode, FMR): FNMR vs ratio of unconsidered pairs, a line per method."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ratios = 100 * (erc.RELEASED_RATIOS if reject_ratios is None else np.asarray(reject_ratios))
  panels = [(m, f) for m in table for f in table[m]]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
  styles = {"learned": ("tab:blue", "-"), "oracle": ("tab:green", "--"),
            "random": ("tab:gray", ":")}
  for ax, (mode, f) in zip(axes[0], panels):
    for name, res in table[mode][f].items():
      colour, ls = styles.get(name, (None, "-"))
      ax.plot(ratios, res["fnmr"], ls, color=colour, label=f"{name} (AUC {res['auc']:.3f})")
    ax.set_title(f"FMR={f}, threshold {mode}", fontsize=10)
    ax.set_xlabel("Ratio of unconsidered pairs [%]")
    ax.set_ylabel("FNMR")
    ax.set_xlim(0, 95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def synthetic_report(features, quality, labels, severity, *, out_dir: Path, train_steps: int,
                     wall_seconds: float, kinds=None, random_orderings: int = 5,
                     seed: int = 0) -> dict:
  """The demo's held-out evaluation: all pairs, learned vs random vs oracle (true severity)."""
  a, b, genuine = all_pairs(labels)
  sim = cosine(features, a, b)
  pair_q = np.minimum(quality[a], quality[b])
  oracle = -np.maximum(severity[a], severity[b])
  rng = np.random.default_rng(seed)
  randoms = [rng.random(len(labels)) for _ in range(random_orderings)]
  methods = {"learned": pair_q, "oracle": oracle}
  table = erc_table(sim, genuine, methods)
  rand_tables = [erc_table(sim, genuine, {"random": np.minimum(r[a], r[b])})
                 for r in randoms]
  for mode in table:
    for f in table[mode]:
      runs = [t[mode][f]["random"] for t in rand_tables]
      table[mode][f]["random"] = {"fnmr": np.mean([r["fnmr"] for r in runs], 0).tolist(),
                                  "auc": float(np.mean([r["auc"] for r in runs]))}
  metrics = {
      "spearman_quality_vs_severity": spearman(quality, severity),
      "spearman_by_kind": ({k: spearman(quality[kinds == k], severity[kinds == k])
                            for k in sorted(set(kinds))} if kinds is not None else {}),
      "erc_auc": {mode: {f: {m: table[mode][f][m]["auc"] for m in table[mode][f]}
                         for f in table[mode]} for mode in table},
      "erc_fnmr": {mode: {f: {m: table[mode][f][m]["fnmr"] for m in table[mode][f]}
                          for f in table[mode]} for mode in table},
      "reject_ratios": erc.RELEASED_RATIOS.tolist(),
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
  plot_erc(table, out_dir / "erc.png",
           title=f"Held-out synthetic identities: {len(sim):,} pairs "
                 f"({int(genuine.sum()):,} genuine)")
  return metrics


def load_split(data_dir, split: str):
  """Decoded images [N,H,W,3], labels [N] and per-record metadata of a split."""
  from crfiqa_jax.data import open_dataset
  ds = open_dataset(data_dir, split)
  recs = [ds[i] for i in range(len(ds))]
  images = np.stack([r["image"] for r in recs])
  labels = np.array([r["label"] for r in recs])
  return images, labels, [r["metadata"] for r in recs]


def evaluate_checkpoint_state(state, config, out_dir: Path, *, started: float | None = None):
  """Evaluates a trained state on config.eval_data_dir's "test" split (synthetic layout)."""
  from crfiqa_jax import train
  t0 = time.perf_counter()
  images, labels, meta = load_split(config.eval_data_dir, "test")
  model = train.build_model(config)
  feats, quality = extract(train.predict_fn(model), train.inference_variables(state), images,
                           batch_size=config.get("eval_batch_size", 256))
  severity = np.array([m.get("severity", np.nan) for m in meta], np.float64)
  if np.isnan(severity).any():
    raise ValueError(f"{config.eval_data_dir} test split lacks per-image 'severity' metadata")
  kinds = np.array([m.get("kind", "") for m in meta])
  wall = time.perf_counter() - (started if started is not None else t0)
  return synthetic_report(feats, quality, labels, severity, out_dir=Path(out_dir),
                          train_steps=int(state.step), wall_seconds=wall, kinds=kinds)
