"""A straightforward port of the released CR-FIQA ERC algorithm (ERC/erc.py + ERC/roc.py of
fdbtrs/CR-FIQA), step by step with Python loops: the oracle for crfiqa_jax.erc's
"recomputed" mode and the baseline of benchmarks/erc.py. Written from its description:
sort pairs by quality, drop the first int(r·N), build the ROC over unique negated
distances, take the first operating point with FMR nearest the target, count genuine
distances strictly below it."""

import math
import operator

import numpy as np


def _roc(gen_dist, imp_dist):
  gen = list(zip((-gen_dist).tolist(), [1] * len(gen_dist)))
  imp = list(zip((-imp_dist).tolist(), [0] * len(imp_dist)))
  stacked = np.array(sorted(gen + imp, key=operator.itemgetter(0)))
  cumul = np.cumsum(stacked[:, 1])
  thresholds, first = np.unique(stacked[:, 0], return_index=True)
  fnm = cumul[first] - stacked[first][:, 1]
  fm = len(imp_dist) - (first - fnm)
  return thresholds * -1, fm / len(imp_dist)


def released_erc(similarity, genuine, quality, fmrs=(1e-2, 1e-3, 1e-4), ratios=None):
  similarity = np.asarray(similarity, np.float64)
  genuine = np.asarray(genuine, bool)
  order = np.argsort(np.asarray(quality, np.float64))
  n = len(similarity)
  dist_all = np.arccos(np.clip(similarity, -1.0, 1.0)) / math.pi
  out = [[] for _ in fmrs]
  for rate in (np.arange(0, 0.98, 0.05) if ratios is None else ratios):
    kept = order[int(rate * n):]
    pos = np.sort(dist_all[kept][genuine[kept]])
    neg = np.sort(dist_all[kept][~genuine[kept]])
    thrs, fmr = _roc(pos, neg)
    for i, target in enumerate(fmrs):
      th = thrs[np.argmin(abs(fmr - target))]
      accepted = [g for g in pos if g < th]
      out[i].append(1 - len(accepted) / len(pos))
  return np.array(out)
