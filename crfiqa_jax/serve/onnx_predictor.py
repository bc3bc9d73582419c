"""Runs an ONNX file written by `python -m crfiqa_jax.export` with onnxruntime, through
crfiqa_jax.serve.inference's predictor protocol: uint8 RGB images [B, H, W, 3] in,
(embedding [B, D], quality [B]) out, normalisation and layout inside. The forward is the
file's alone: nothing of the Flax model runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from crfiqa_jax import models


class OnnxPredictor:
  """Scores faces with an exported ONNX file, without JAX or the model code.

  `predictor(images uint8 [B, H, W, 3] RGB)` → (embedding float32 [B, D], quality float32
  [B]); D = 0 (an empty array) when the file was exported with `--outputs=quality`. A file
  with a fixed batch is fed in chunks of that size, the last one padded.
  """

  def __init__(self, path, providers: Sequence[str] | None = None, threads: int = 0,
               options=None):
    if not Path(path).is_file():
      raise FileNotFoundError(f"no ONNX file at {path}")
    opts = options or ort.SessionOptions()  # crfiqa_jax.serve.engines.session_options: tuned
    if options is None:
      opts.intra_op_num_threads = threads
    try:
      self.session = ort.InferenceSession(str(path), opts,
                                          providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for bad files
      raise ValueError(f"{path} is not a model onnxruntime can load: "
                       f"{str(e).splitlines()[0]}") from e
    inp = self.session.get_inputs()[0]
    shape = inp.shape
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
      raise ValueError(f"{path}: input {inp.name} {shape} is not an [N, 3, S, S] or "
                       "[N, S, S, 3] image batch")
    self.input_name, self.nchw = inp.name, shape[1] == 3
    self.image_size = int(shape[2])
    self.batch = shape[0] if isinstance(shape[0], int) else None
    self.batch_multiple = self.batch or 1  # crfiqa_jax.inference pads batches to this
    self.output_names = [o.name for o in self.session.get_outputs()]
    if "quality" not in self.output_names:
      raise ValueError(f"{path} has no 'quality' output (outputs: {self.output_names})")
    emb = [o for o in self.session.get_outputs() if o.name == "embedding"]
    self.embedding_dim = int(emb[0].shape[1]) if emb else 0
    self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

  def _run(self, x):
    n = len(x)
    x = pad_to(x, self.batch)
    out = dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))
    emb = out["embedding"][:n] if "embedding" in out else np.zeros((n, 0), np.float32)
    return emb, out["quality"][:n]

  def __call__(self, images: np.ndarray):
    x = file_input(images, self.image_size, self.nchw)
    step = self.batch or max(len(x), 1)
    parts = [self._run(x[i:i + step]) for i in range(0, len(x), step)] or [self._run(x)]
    return (np.concatenate([e for e, _ in parts]).astype(np.float32),
            np.concatenate([q for _, q in parts]).astype(np.float32))


def file_input(images, image_size: int, nchw: bool) -> np.ndarray:
  """uint8 RGB images [B, S, S, 3] → the float32 input of an exported file (normalised, NCHW
  where the file is); ValueError for anything else."""
  images = np.asarray(images)
  s = image_size
  if images.dtype != np.uint8 or images.shape[1:] != (s, s, 3):
    raise ValueError(f"expected uint8 RGB images [B, {s}, {s}, 3], got {images.dtype} "
                     f"{images.shape}")
  x = models.normalize(images)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x


def pad_to(x: np.ndarray, batch: int | None) -> np.ndarray:
  """x padded with zero images to a file's fixed batch (None: any batch, x as it is)."""
  if batch is None or len(x) == batch:
    return x
  return np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), x.dtype)])
