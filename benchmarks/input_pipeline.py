"""Input speed on this machine: the grain training pipeline, and .rec conversion.

    python benchmarks/input_pipeline.py [--images 4000] [--workers 2] [--batches 200]

1. Writes an insightface-style train.rec/idx/property of 112×112 JPEG faces (synthetic
   faces rendered at 112 px, quality 95 — about the size of MS1MV2's JPEGs) with the
   pure-Python RecordIO writer.
2. Times `python -m crfiqa_jax.prepare insightface` on it (header checks, TFDS ArrayRecord
   writing): conversion images/s.
3. Times the training pipeline (`input_pipeline.train_dataset`: global shuffle, decode with
   simplejpeg, random flip, batch 128, --workers processes), after a warm-up: images/s.
   Normalisation to [-1, 1] happens on the accelerator inside the jitted step, so it is not
   part of this figure (the host ships uint8).
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path



def main():
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=4000)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--batches", type=int, default=200)
  p.add_argument("--batch", type=int, default=128)
  args = p.parse_args()

  from crfiqa_jax.data import prepare
  from crfiqa_jax.train import input_pipeline
  from crfiqa_jax.data import recordio, synthetic

  tmp = Path(tempfile.mkdtemp())
  try:
    src = tmp / "rec"
    src.mkdir()
    ids = 100
    with recordio.RecordIOWriter(src / "train.rec", src / "train.idx") as w:
      w.write(recordio.pack(recordio.IRHeader(2, [args.images + 1, args.images + 1 + ids], 0, 0),
                            b""), 0)
      gen = synthetic.samples(ids, args.images // ids, seed=0, size=112)
      for k, ex in enumerate(gen, start=1):
        w.write(recordio.pack(recordio.IRHeader(0, float(ex["label"]), k, 0), ex["image"]), k)
    (src / "property").write_text(f"{ids},112,112")
    size_kb = (src / "train.rec").stat().st_size / args.images / 1024
    print(f"wrote {args.images} JPEGs ({size_kb:.1f} KiB each) to a .rec")

    import argparse as ap
    t = time.perf_counter()
    prepare.run(ap.Namespace(kind="insightface", src=str(src), out=str(tmp / "ds"),
                             image_size=112, shards=4))
    dt = time.perf_counter() - t
    print(f"conversion .rec → ArrayRecord: {args.images / dt:8.0f} images/s ({dt:.1f} s)")

    it = iter(input_pipeline.train_dataset(tmp / "ds", local_batch=args.batch, seed=0,
                                           worker_count=args.workers, process_index=0,
                                           process_count=1))
    for _ in range(10):
      next(it)
    t = time.perf_counter()
    for _ in range(args.batches):
      b = next(it)
    dt = time.perf_counter() - t
    assert b["image"].shape == (args.batch, 112, 112, 3)
    print(f"training pipeline ({args.workers} workers, batch {args.batch}, simplejpeg): "
          f"{args.batches * args.batch / dt:8.0f} images/s")
    if hasattr(it, "close"):
      it.close()
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
