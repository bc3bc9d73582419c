"""Error-versus-reject / error-versus-discard characteristics (ERC / EDC), numpy only.

Two conventions live here, the third ("standard", fiqat's EDC) in crfiqa_jax.evaluation.edc;
every report says which one it used.

"recomputed" (`error_versus_reject(..., threshold="recomputed")`) — bit for bit the released
CR-FIQA evaluation script (fdbtrs/CR-FIQA, ERC/erc.py and ERC/roc.py), i.e. the numbers of
the CR-FIQA paper's ERC plots and AUC tables:
  * comparison distance d = arccos(clip(similarity, -1, 1)) / π;
  * pairs are ordered by np.argsort(quality) (ascending; ties broken as numpy's default
    sort breaks them) and the first int(r·N) of ALL pairs are dropped for each ratio
    r = 0, 0.05, …, 0.95;
  * on the kept pairs the ROC is built over the unique distances, scanning from the largest
    distance down; the operating point is the first one whose FMR (share of impostors with
    d ≤ candidate) is nearest the target; the threshold is that candidate distance;
  * FNMR = 1 − #(kept genuine with d < threshold) / #kept genuine (strict "<");
  * AUC = trapezoid over the 20 nominal ratios (`erc_auc`).
  The threshold therefore moves with every ratio.

"fixed" (`error_versus_reject(..., threshold="fixed")`) — a fixed threshold on the released
ratio grid. Kept for plots beside "recomputed" on the same axis and for ijbc's template-pair
ERC; it is NOT fiqat's EDC:
  * the threshold is set once on all pairs (`fixed_threshold`): with k = floor(fmr·#impostors),
    a pair is accepted when its similarity is strictly greater than the (k+1)-th highest
    impostor similarity (at most k impostors accepted);
  * ratio r counts ALL pairs (mated and non-mated): the lowest int(r·N) pair qualities are
    discarded, with every pair tied in quality with the last of them (so slightly more than
    r may go); the x value reported is still the nominal r;
  * FNMR on the kept genuine pairs at that threshold. At one quality cut this FNMR equals
    fiqat's, but the curve's x axis (and so any area) depends on the impostors' qualities.

All run in O(N log N) for the sorts plus O(N) per ratio, vectorised.
"""

from __future__ import annotations

import concurrent.futures
from typing import Sequence

import numpy as np

RELEASED_RATIOS = np.arange(0, 0.98, 0.05)  # 0, 0.05, ..., 0.95 as the released script
MODES = ("recomputed", "fixed")
# Every target FMR the reports know, by the name they are reported under.
FMRS = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}


def validate(similarity, genuine, quality, need_both=True):
  similarity = np.asarray(similarity, dtype=np.float64).reshape(-1)
  genuine = np.asarray(genuine).reshape(-1)
  quality = np.asarray(quality, dtype=np.float64).reshape(-1)
  if not (len(similarity) == len(genuine) == len(quality)):
    raise ValueError(f"similarity, genuine and quality differ in length: {len(similarity)}, "
                     f"{len(genuine)}, {len(quality)}")
  if genuine.dtype != bool:
    if not np.isin(genuine, (0, 1)).all():
      raise ValueError("genuine must be boolean (or 0/1)")
    genuine = genuine.astype(bool)
  for name, x in (("similarity", similarity), ("quality", quality)):
    if not np.isfinite(x).all():
      raise ValueError(f"{name} has {int((~np.isfinite(x)).sum())} non-finite values")
  if need_both and (genuine.all() or not genuine.any()):
    raise ValueError("need both genuine and impostor pairs")
  return similarity, genuine, quality


def error_versus_reject(similarity, genuine, quality, *, fmr: float | Sequence[float] = 1e-3,
                        reject_ratios: Sequence[float] | None = None,
                        threshold: str = "recomputed") -> np.ndarray:
  """FNMR at each reject ratio (module docstring gives the two semantics).

  Args:
    similarity: [N] cosine similarity per comparison pair.
    genuine: [N] bool, True for mated pairs.
    quality: [N] pair quality (callers pass the min of the two images' qualities);
      higher = better, the lowest are rejected first.
    fmr: target false match rate, or a sequence of them.
    reject_ratios: ratios of discarded pairs; default 0, 0.05, …, 0.95.
    threshold: "recomputed" (released script) or "fixed" (fixed threshold, released grid);
      for fiqat's standard EDC use `edc`.
  Returns:
    FNMR [len(reject_ratios)] for a scalar fmr, [len(fmr), len(reject_ratios)] otherwise.
    A ratio that leaves no genuine (or, recomputed, no impostor) pair gives NaN.
  """
  similarity, genuine, quality = validate(similarity, genuine, quality)
  ratios = RELEASED_RATIOS if reject_ratios is None else np.asarray(reject_ratios, np.float64)
  if ((ratios < 0) | (ratios >= 1)).any():
    raise ValueError("reject ratios must lie in [0, 1)")
  fmrs = np.atleast_1d(np.asarray(fmr, dtype=np.float64))
  if ((fmrs <= 0) | (fmrs >= 1)).any():
    raise ValueError(f"fmr must lie in (0, 1), got {fmr}")
  if threshold == "recomputed":
    out = _recomputed(similarity, genuine, quality, fmrs, ratios)
  elif threshold == "fixed":
    out = _fixed(similarity, genuine, quality, fmrs, ratios)
  else:
    raise ValueError(f"threshold must be one of {MODES}, got {threshold!r}")
  return out[0] if np.ndim(fmr) == 0 else out


def _recomputed(similarity, genuine, quality, fmrs, ratios):
  n = len(similarity)
  # The released ordering: numpy's default argsort of the qualities (its tie order decides
  # which pairs int(r·N) drops). It runs in a thread while the top set is prepared.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    by_quality = pool.submit(np.argsort, quality)
    step = max(1, n // 2**20)  # the top set's depth is estimated on ~1M pairs
    imp_sample = similarity[::step][~genuine[::step]]
    share = 4 * float(fmrs.max()) + 256 / max(len(imp_sample), 1)
    out = None
    while out is None:
      top = _TopSet(similarity, genuine, imp_sample, share)
      q_order = by_quality.result()
      out = _recomputed_on(top, genuine, q_order, fmrs, ratios, n)
      share *= 4  # the top set was too shallow for some ratio: deepen it, exactly as before
  return out


class _TopSet:
  """The pairs with similarity ≥ about the share-quantile from the top of the impostor
  similarities (estimated on a sample; all pairs once share ≥ 1), with score
  s = −arccos(similarity)/π (the released ROC's candidates are the distinct scores).
  Operating points at FMR ≤ 1e-2 lie among the highest scores, so per-ratio work touches
  this set only; `complete` says whether it holds every pair.

  Impostors are grouped by equal score (`imp_val`, descending; kept counts `imp_cnt`): their
  cumulative counts are the ROC's FMR levels. Genuine pairs — most of the set on real data —
  are never sorted: they sit in K bins of equal score width (kept counts `gen_cnt`; members
  in bin order, `gen_pair` and `gen_score`; dropped pairs flagged in `gone`), enough to
  count kept genuine pairs above a score and to find the lowest kept genuine score between
  two impostor scores. The lowest impostor group may miss pairs of equal score outside the
  set, so when incomplete it is never used; every genuine pair scoring above it is in the
  set (the score is non-decreasing in similarity)."""

  K = 1 << 16

  def __init__(self, similarity, genuine, imp_sample, share):
    k = int(np.ceil(share * len(imp_sample)))
    self.complete = k >= len(imp_sample)
    if self.complete:
      idx = np.arange(len(similarity))
    else:
      cut = np.partition(imp_sample, len(imp_sample) - k)[len(imp_sample) - k]
      idx = np.flatnonzero(similarity >= cut)        # never empty: holds that impostor
    score = -(np.arccos(np.clip(similarity[idx], -1.0, 1.0)) / np.pi)
    is_gen = genuine[idx]
    is_imp = ~is_gen
    values, inverse = np.unique(score[is_imp], return_inverse=True)
    self.imp_val = values[::-1]                       # descending
    group = len(values) - 1 - inverse.reshape(-1)
    self.imp_cnt = np.bincount(group, minlength=len(values))
    g_score, g_pair = score[is_gen], idx[is_gen]
    self.lo = float(score.min())
    self.scale = self.K / (0.0 - self.lo) if self.lo < 0 else 0.0
    g_bin = self._bins(g_score)
    in_bin = np.argsort(g_bin, kind="stable")         # a counting sort (16-bit keys)
    self.gen_score, self.gen_pair = g_score[in_bin], g_pair[in_bin]
    self.gen_cnt = np.bincount(g_bin, minlength=self.K)
    self.starts = np.r_[0, np.cumsum(self.gen_cnt)]
    self.gone = np.zeros(len(similarity), bool)
    # Every pair's code: 2·impostor group or 2·genuine bin + 1 inside the set, −2 / −1
    # (impostor / genuine) outside: one gather per ratio tells what a dropped pair was.
    itype = np.int32 if len(similarity) < 2**30 else np.int64
    self.code = genuine.view(np.int8).astype(itype)
    self.code -= 2
    self.code[idx[is_imp]] = 2 * group
    self.code[g_pair] = 2 * g_bin.astype(itype) + 1

  def _bins(self, s):
    """Bins of in-set scores (all ≥ lo): non-decreasing in the score."""
    b = ((s - self.lo) * self.scale).astype(np.int32)
    return np.minimum(b, self.K - 1, out=b).astype(np.uint16)

  def _bin(self, x):
    """`_bins` for one score, any float; −inf → 0, +inf → K − 1 (same IEEE arithmetic)."""
    if x == np.inf:
      return self.K - 1
    if x == -np.inf or x <= self.lo:
      return 0
    return min(int((float(x) - self.lo) * self.scale), self.K - 1)

  def drop(self, pairs, code):
    """Takes dropped in-set pairs (`pairs` and their codes, all ≥ 0) out of the kept set."""
    odd = (code & 1).astype(bool)
    self.imp_cnt -= np.bincount(code[~odd] >> 1, minlength=len(self.imp_cnt))
    self.gen_cnt -= np.bincount(code[odd] >> 1, minlength=self.K)
    self.gone[pairs[odd]] = True

  def _members(self, b, above=-np.inf, below=np.inf):
    """Kept genuine scores in bin b strictly between `above` and `below`."""
    span = slice(self.starts[b], self.starts[b + 1])
    s = self.gen_score[span]
    return s[~self.gone[self.gen_pair[span]] & (s > above) & (s < below)]

  def kept_from(self):
    """[K + 1]: kept genuine pairs in bins ≥ b."""
    return np.r_[np.cumsum(self.gen_cnt[::-1])[::-1], 0]

  def genuine_above(self, x, kept_from):
    """Kept genuine pairs with score > x (kept_from: `kept_from()` of the current counts)."""
    b = self._bin(x)
    return int(kept_from[b + 1]) + len(self._members(b, above=x))

  def lowest_genuine_between(self, a, b):
    """The lowest kept genuine score in the open interval (a, b), or None."""
    ba, bb = self._bin(a), self._bin(b)
    s = self._members(ba, above=a, below=b)
    if len(s) == 0 and bb > ba:
      # The lowest bin above ba holding a kept genuine pair: all its members lie above a,
      # and below b unless it is b's own bin.
      nz = np.flatnonzero(self.gen_cnt[ba + 1:bb + 1])
      if len(nz):
        s = self._members(ba + 1 + int(nz[0]), above=a, below=b)
    return float(s.min()) if len(s) else None


def _recomputed_on(top, genuine, q_order, fmrs, ratios, n):
  """FNMRs [len(fmrs), len(ratios)] from a top set, or None if it is too shallow."""
  n_gen = int(genuine.sum())
  n_imp = len(genuine) - n_gen
  out = np.full((len(fmrs), len(ratios)), np.nan)
  done = 0
  for j in np.argsort(ratios, kind="stable"):
    cut = int(ratios[j] * n)
    if cut > done:
      pairs = q_order[done:cut]
      code = top.code[pairs]
      n_gone_gen = int(np.count_nonzero(code & 1))
      n_gen -= n_gone_gen
      n_imp -= len(code) - n_gone_gen
      in_set = code >= 0
      top.drop(pairs[in_set], code[in_set])
      done = cut
    if n_imp == 0 or n_gen == 0:
      continue
    kept_from = top.kept_from()
    for i, f in enumerate(fmrs):
      accepted = _accepted_genuine(top, kept_from, n_imp, f)
      if accepted is None:
        return None
      out[i, j] = 1 - accepted / n_gen  # as the released script
  return out


def _accepted_genuine(top, kept_from, n_imp, f):
  """Kept genuine pairs accepted at the released operating point for FMR f, or None where
  the answer could depend on pairs below the top set.

  The released ROC's candidates are the distinct kept scores; the FMR at a candidate is
  the share of kept impostors scoring ≥ it, so its levels are the cumulative impostor counts
  F over the impostor groups (descending), plus 0 where a genuine score lies above every
  kept impostor. The released argmin of |FMR − f| takes the first minimum in ascending score:
  of two equally near levels the larger, and within a level its lowest candidate — the
  lowest kept score above the next impostor group. Genuine pairs strictly above that
  candidate are accepted (distance strictly below the threshold).
  """
  usable = len(top.imp_cnt) if top.complete else len(top.imp_cnt) - 1
  F = np.cumsum(top.imp_cnt[:usable])
  fm = F / n_imp
  i_hi = int(np.searchsorted(fm, f, side="right"))  # first level with FMR > f
  if i_hi == usable:
    if not top.complete:
      return None
    choice = None
  else:
    choice = i_hi
  below = F[i_hi - 1] if i_hi > 0 else 0
  if below > 0:
    lo = int(np.searchsorted(F, below, side="left"))  # the group where that level starts
  else:
    first = int(np.searchsorted(F, 0, side="right"))  # the first kept impostor group
    lo = -1 if first < usable and top.genuine_above(top.imp_val[first], kept_from) else None
  if lo is not None:
    d_lo = abs((int(F[lo]) if lo >= 0 else 0) / n_imp - f)
    if choice is None or abs(int(F[choice]) / n_imp - f) > d_lo:
      choice = lo
  if choice is None:
    return None
  level = int(F[choice]) if choice >= 0 else 0
  nxt = int(np.searchsorted(F, level, side="right"))  # the next kept impostor group below
  if nxt == usable and not top.complete:
    return None
  upper = top.imp_val[choice] if choice >= 0 else np.inf
  lower = top.imp_val[nxt] if nxt < usable else -np.inf
  lowest = top.lowest_genuine_between(lower, upper)
  return top.genuine_above(upper if lowest is None else lowest, kept_from)


def fixed_threshold(similarity, genuine, fmr: float) -> float:
  """Similarity threshold accepting at most floor(fmr·#impostors) impostors (accept: s > t)."""
  imp = np.asarray(similarity, np.float64)[~np.asarray(genuine, bool)]
  k = int(np.floor(fmr * len(imp)))
  if k >= len(imp):
    return -np.inf
  return float(np.partition(imp, len(imp) - 1 - k)[len(imp) - 1 - k])  # (k+1)-th highest


def discard_masks(quality, ratios):
  """Kept-pair masks for each ratio with ties in quality discarded together; also returns
  the fractions actually discarded."""
  quality = np.asarray(quality, np.float64)
  n = len(quality)
  q_sorted = np.sort(quality)
  masks, fractions = [], []
  for r in ratios:
    m = int(r * n)
    if m == 0:
      keep = np.ones(n, bool)
    else:
      keep = quality > q_sorted[m - 1]
    masks.append(keep)
    fractions.append(1 - keep.mean())
  return masks, np.asarray(fractions)


def _fixed(similarity, genuine, quality, fmrs, ratios):
  thresholds = [fixed_threshold(similarity, genuine, f) for f in fmrs]
  masks, _ = discard_masks(quality, ratios)
  out = np.full((len(fmrs), len(ratios)), np.nan)
  for j, keep in enumerate(masks):
    gen = similarity[keep & genuine]
    if len(gen) == 0:
      continue
    for i, t in enumerate(thresholds):
      out[i, j] = np.mean(gen <= t)
  return out


def erc_auc(reject_ratios, fnmr, *, limit: float | None = None) -> float:
  """Trapezoidal area under FNMR(reject ratio) — the released script's AUC; with `limit`,
  only up to that ratio (the curve linearly interpolated at the limit). NaN points are an
  error. This is not fiqat's stepwise pAUC over the actual discard fraction: `edc_pauc`."""
  x = np.asarray(reject_ratios, np.float64)
  y = np.asarray(fnmr, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"reject_ratios {x.shape} and fnmr {y.shape} must be equal 1-D shapes")
  if limit is not None:
    if limit <= x[0]:
      return 0.0
    y_lim = np.interp(limit, x, y)
    keep = x < limit
    x, y = np.r_[x[keep], limit], np.r_[y[keep], y_lim]
  if np.isnan(y).any():
    raise ValueError("FNMR has NaN points (a ratio left no genuine/impostor pairs)")
  return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
