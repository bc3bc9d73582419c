"""IJB-C 1:1 verification with quality-weighted templates (paper Table 2), and alignment.

Layout (as distributed with the insightface IJB evaluation):
  ROOT/meta/ijbc_face_tid_mid.txt          "image template_id media_id" per image
  ROOT/meta/ijbc_template_pair_label.txt   "template1 template2 label" per comparison
  ROOT/meta/ijbc_name_5pts_score.txt       "image x1 y1 … x5 y5 score" (loose-crop landmarks)
  ROOT/loose_crop/<image>                  the loose crops

Template feature (the released CR-FIQA feature_extraction/eval_ijbc_qs.py): image feature = raw
emb(img) + raw emb(flip) (summed un-normalised, so the embedding norms weigh in, as the
released use_norm_score); qualities min-max normalised over all images are the weights;
weighted features are averaged within each media, summed over the media of a template and
L2-normalised. Comparison score = cosine. TAR at FAR 1e-6 … 1e-1 with the fixed-threshold
convention of `erc.fixed_threshold` (accept score > the (k+1)-th highest impostor score,
k = floor(FAR·#impostors)), for unweighted and quality-weighted templates.

ERC (the released erc_ijbc.py): on the UNWEIGHTED template scores (the quality must not
also shape the features it is judged on), pair quality = min over the images of both
templates, FNMR at FMR 1e-2/1e-3/1e-4 with the released recomputed threshold (cosine
distance arccos/π, threshold re-chosen at each reject ratio) and with the standard fixed
threshold (`erc` module docstring), plus the AUC over reject ratios 0 … 0.95.

    python -m crfiqa_jax.ijbc --root=IJBC --fr=CHECKPOINT_OR_NPZ --quality=CHECKPOINT_OR_CSV \
        --out=DIR [--arch=iresnet100]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from crfiqa_jax import cli, models
from crfiqa_jax.data import sources
from crfiqa_jax.data.codecs import decode_image
from crfiqa_jax.data.faces import align
from crfiqa_jax.evaluation import benchmarks as bm, erc
from crfiqa_jax.evaluation.pair_report import PAIR_QUALITY, pair_quality as combine
from crfiqa_jax.serve import engines, inference, registry

log = logging.getLogger(__name__)

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
ERC_FMRS = tuple(erc.FMRS.values())


def read_meta(root: str | Path):
  """(image names, template ids, media ids, pairs [P, 2] of template ids, labels [P])."""
  meta = Path(root) / "meta"
  files = {"faces": meta / "ijbc_face_tid_mid.txt", "pairs": meta / "ijbc_template_pair_label.txt"}
  for f in files.values():
    if not f.exists():
      raise FileNotFoundError(f"{f} not found (expected the IJB-C meta layout)")
  names, tids, mids = [], [], []
  for n, ln in enumerate(files["faces"].read_text().split("\n"), 1):
    if ln.strip():
      parts = ln.split()
      if len(parts) < 3:
        raise ValueError(f"{files['faces']}:{n}: expected 'image template media'")
      names.append(parts[0])
      tids.append(int(parts[1]))
      mids.append(int(parts[2]))
  pairs = np.loadtxt(files["pairs"], dtype=np.int64, ndmin=2)
  if pairs.shape[1] != 3:
    raise ValueError(f"{files['pairs']}: expected 'template1 template2 label' lines")
  return names, np.array(tids), np.array(mids), pairs[:, :2], pairs[:, 2].astype(bool)


def minmax(q: np.ndarray) -> np.ndarray:
  q = np.asarray(q, np.float64)
  span = q.max() - q.min()
  return np.ones_like(q) if span == 0 else (q - q.min()) / span


def template_features(features: np.ndarray, weights: np.ndarray, template_ids: np.ndarray,
                      media_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(template ids [T], L2-normalised template features [T, D]): weighted features averaged
  per (template, media), summed over a template's media."""
  feats = features * weights[:, None]
  tpl, tpl_inv = np.unique(template_ids, return_inverse=True)
  # Mean per (template, media): group by the pair.
  pair_keys = tpl_inv.astype(np.int64) * (media_ids.max() + 1) + media_ids
  groups, g_inv, g_count = np.unique(pair_keys, return_inverse=True, return_counts=True)
  media_mean = np.zeros((len(groups), feats.shape[1]))
  np.add.at(media_mean, g_inv, feats)
  media_mean /= g_count[:, None]
  out = np.zeros((len(tpl), feats.shape[1]))
  np.add.at(out, groups // (media_ids.max() + 1), media_mean)
  return tpl, models.l2_normalize(out, axis=1)


def tar_at_far(scores: np.ndarray, genuine: np.ndarray, fars=FARS) -> dict[str, float | None]:
  """TAR per FAR (None where there are too few impostors for that FAR)."""
  out = {}
  n_imp = int((~genuine).sum())
  for far in fars:
    if n_imp * far < 1:
      out[f"{far:.0e}"] = None
      continue
    t = erc.fixed_threshold(scores, genuine, far)
    out[f"{far:.0e}"] = float(np.mean(scores[genuine] > t))
  return out


def verify(features, quality, template_ids, media_ids, pairs, labels, *, weighted=True,
           pair_quality="min"):
  """Scores of template pairs, TAR@FAR, and per-pair quality (template quality = min over
  its images; pair = `pair_report.pair_quality` of the two templates', min by default)."""
  w = minmax(quality) if weighted else np.ones(len(features))
  tpl, tfeat = template_features(features, w, template_ids, media_ids)
  pos = {t: i for i, t in enumerate(tpl)}
  missing = [t for t in np.unique(pairs) if t not in pos]
  if missing:
    raise ValueError(f"{len(missing)} templates of the pair list have no images, e.g. "
                     f"{missing[:3]}")
  ia = np.array([pos[t] for t in pairs[:, 0]])
  ib = np.array([pos[t] for t in pairs[:, 1]])
  scores = np.einsum("ij,ij->i", tfeat[ia], tfeat[ib])
  tq = np.full(len(tpl), np.inf)
  np.minimum.at(tq, np.searchsorted(tpl, template_ids), quality)
  return scores, tar_at_far(scores, labels), combine(tq[ia], tq[ib], pair_quality)


def main(argv=None) -> int:
  p = cli.parser("crfiqa_jax.ijbc", __doc__,
                 "python -m crfiqa_jax.ijbc --root=IJB_release/IJBC --fr=arcface_r100.pth "
                 "--quality=crfiqa_l --out=reports/ijbc")
  p.add_argument("--root", required=True,
                 help="the IJB-C release folder (meta/ and loose_crop/ inside)")
  p.add_argument("--fr", required=True,
                 help="FR model: a checkpoint (workdir, exported dir, .pth, .onnx), "
                      "or an .npz of image-sum embeddings; " + registry.HELP)
  p.add_argument("--quality", required=True,
                 help="a checkpoint (as --fr) or a scores CSV (path,quality)")
  p.add_argument("--out", required=True, help="folder for ijbc.json")
  p.add_argument("--arch", default=None, help="architecture of .pth checkpoints (default: "
                                               "detect)")
  p.add_argument("--batch-size", type=int, default=64, help="images per forward")
  p.add_argument("--pair-quality", default="min", choices=PAIR_QUALITY,
                 help="template-pair quality from the two templates' qualities")
  args = p.parse_args(argv)
  cli.quiet_logging()
  return cli.run(lambda: run(args))


def run(args) -> int:
  root = Path(args.root)
  names, tids, mids, pairs, labels = read_meta(root)
  source = None  # decoded and aligned on demand, streamed, when a model is asked for
  if any(Path(s).suffix not in (".npz", ".csv", ".txt") for s in (args.fr, args.quality)):
    source = aligned_source(root, names)
  if Path(args.fr).suffix == ".npz":
    emb = bm.load_embeddings(args.fr)
    feats = np.stack([emb[bm.canonical(n)] for n in names])
  else:
    # Raw emb(img) + raw emb(flip), as the released eval_ijbc_qs.py (not normalised halves).
    feats, _, failures = inference.extract(engines.load_predictor(args.fr, args.arch,
                                                                 exact=True),
                                           source, features="sum",
                                           batch_size=args.batch_size, desc="IJB-C FR")
    if failures:
      raise ValueError(f"{len(failures)} IJB-C images could not be read, e.g. "
                       f"{names[min(failures)]}: {failures[min(failures)]}")
  if Path(args.quality).suffix in (".csv", ".txt"):
    qt = bm.load_quality_csv(args.quality)
    quality = np.array([qt[bm.canonical(n)] for n in names])
  else:
    quality = inference.extract(engines.load_predictor(args.quality, args.arch, exact=True),
                                source,
                                features="none", batch_size=args.batch_size,
                                desc="IJB-C quality")[1]
  result = evaluate(feats, quality, tids, mids, pairs, labels, pair_quality=args.pair_quality)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "ijbc.json").write_text(json.dumps(result, indent=1))
  print(json.dumps({k: v["tar_at_far"] for k, v in result.items() if "tar_at_far" in v}))
  return 0



def evaluate(features, quality, template_ids, media_ids, pairs, labels, *,
             pair_quality: str = "min") -> dict:
  """TAR@FAR for unweighted and quality-weighted templates, and the template-pair ERC
  (module docstring) of the unweighted ones in both threshold modes."""
  result = {}
  for name, weighted in (("unweighted", False), ("quality_weighted", True)):
    scores, tar, pair_q = verify(features, quality, template_ids, media_ids, pairs, labels,
                                 weighted=weighted, pair_quality=pair_quality)
    result[name] = {"tar_at_far": tar}
    if not weighted:
      erc_scores, erc_quality = scores, pair_q
  ratios = erc.RELEASED_RATIOS
  for mode in erc.MODES:
    fnmr = erc.error_versus_reject(erc_scores, labels, erc_quality, fmr=list(ERC_FMRS),
                                   threshold=mode)
    auc = [None if np.isnan(f).any() else erc.erc_auc(ratios, f) for f in fnmr]
    result[f"template_pair_erc_{mode}"] = {
        "templates": "unweighted", "fmr": [f"{f:.0e}" for f in ERC_FMRS],
        "fnmr": [[None if np.isnan(v) else float(v) for v in f] for f in fnmr],
        "auc": auc, "reject_ratios": ratios.tolist()}
  return result


def aligned_source(root: Path, names: list[str]):
  """The loose crops of `names`, each aligned to 112×112 with its 5 landmarks when loaded."""
  lm_file = root / "meta" / "ijbc_name_5pts_score.txt"
  if not lm_file.exists():
    raise FileNotFoundError(f"{lm_file} not found: landmarks are needed to align loose crops")
  lms = {}
  for ln in lm_file.read_text().split("\n"):
    parts = ln.split()
    if len(parts) >= 11:
      lms[parts[0]] = np.array(parts[1:11], np.float64).reshape(5, 2)
  missing = [n for n in names if n not in lms]
  if missing:
    raise ValueError(f"no landmarks for {missing[0]} (and {len(missing) - 1} more) in {lm_file}")

  def load(i):
    try:
      img = decode_image((root / "loose_crop" / names[i]).read_bytes())
    except Exception as e:
      raise sources.SkipImage(f"unreadable ({type(e).__name__}: {e})") from None
    return align(img, lms[names[i]])

  return sources.ImageSource(load, len(names), lambda i: names[i])
