"""Runs an ONNX file (or an OpenVINO IR .xml) with OpenVINO's CPU plugin (extra [openvino])
through crfiqa_jax.serve.inference's predictor protocol: uint8 RGB images [B, H, W, 3] in,
(embedding [B, D], quality [B]) out, normalisation and layout inside.

Precision ("fp32", "bf16", "int8") is OpenVINO's inference precision hint: "bf16" runs
convolutions and matrix products in bfloat16 (accumulating in float32) on CPUs with AMX or
AVX512-BF16, "fp32" keeps float32 everywhere. An int8 file (quantised by benchmarks/int8.py,
which measures why no engine offers int8) runs its quantised layers in int8 and the rest in
float32. One stream of `threads` threads runs one request at a time (the chain of an
iResNet gains nothing from more streams on a few cores); compiled models are kept in
`cache_dir` so a later process skips the compilation.

Calls are asynchronous: `predictor(images)` starts the inference and returns two arrays
whose values are read (`np.asarray`) when the caller needs them, so
crfiqa_jax.serve.inference.stream prepares the next batch while this one runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crfiqa_jax import cli
from crfiqa_jax.serve.onnx_predictor import file_input, pad_to

PRECISIONS = ("fp32", "bf16", "int8")
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
REQUESTS = 4  # requests in flight: stream keeps two batches (four with mirrored images)


def bf16_supported() -> bool:
  """OpenVINO's CPU plugin runs bfloat16 natively here (its BF16 optimisation capability)."""
  ov = cli.optional_import("openvino", "openvino", "the openvino engine")
  return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoPredictor:
  """Scores faces with an ONNX file compiled by OpenVINO for this CPU.

  `predictor(images uint8 [B, H, W, 3] RGB)` → (embedding [B, D], quality [B]) as lazy
  float32 arrays (np.asarray waits for them); D = 0 for a quality-only file. A file with a
  fixed batch is fed in chunks of that size, the last one padded.
  """

  def __init__(self, path, precision: str = "fp32", *, threads: int = 1,
               cache_dir: str | Path | None = None):
    ov = cli.optional_import("openvino", "openvino", "the openvino engine")
    if precision not in PRECISIONS:
      raise ValueError(f"precision {precision!r}; choose one of {PRECISIONS}")
    if not Path(path).is_file():
      raise FileNotFoundError(f"no model file at {path}")
    config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "NUM_STREAMS": 1,
              "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY"}
    if cache_dir is not None:
      config["CACHE_DIR"] = str(cache_dir)
    try:  # from the file's path: a compiled model in cache_dir is found without reading it
      self.compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError subclasses for bad files
      raise ValueError(f"{path} is not a model OpenVINO can load: "
                       f"{str(e).strip().splitlines()[0]}") from e
    shape = self.compiled.inputs[0].get_partial_shape()
    dims = [d.get_length() if d.is_static else None for d in shape]
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
      raise ValueError(f"{path}: input {shape} is not an [N, 3, S, S] or [N, S, S, 3] "
                       "image batch")
    self.nchw = dims[1] == 3
    self.image_size = int(dims[2])
    self.batch = dims[0]
    self.batch_multiple = self.batch or 1  # crfiqa_jax.inference pads batches to this
    outputs = self.compiled.outputs  # a tensor may carry several names: the ONNX one first
    self.output_names = [next((n for n in ("embedding", "quality") if n in o.get_names()),
                              o.get_any_name()) for o in outputs]
    if "quality" not in self.output_names:
      raise ValueError(f"{path} has no 'quality' output (outputs: {self.output_names})")
    emb = [o for o, n in zip(outputs, self.output_names) if n == "embedding"]
    self.embedding_dim = int(emb[0].get_partial_shape()[1].get_length()) if emb else 0
    self.precision = precision
    self._requests = [self.compiled.create_infer_request() for _ in range(REQUESTS)]
    self._last: dict[int, _Started] = {}
    self._turn = 0

  def _start(self, x: np.ndarray) -> "_Started":
    """Starts one request on x (float32, the file's layout and batch); the request's
    previous results are read out first, so nothing in flight is overwritten."""
    k = self._turn % REQUESTS
    self._turn += 1
    if k in self._last:
      self._last[k].outputs()
    n = len(x)
    x = pad_to(x, self.batch)
    request = self._requests[k]
    request.start_async({0: x}, share_inputs=False)
    self._last[k] = started = _Started(request, n, self.output_names)
    return started

  def __call__(self, images: np.ndarray):
    x = file_input(images, self.image_size, self.nchw)
    if not len(x):
      return np.zeros((0, self.embedding_dim), np.float32), np.zeros(0, np.float32)
    step = self.batch or len(x)
    parts = [self._start(x[i:i + step]) for i in range(0, len(x), step)]
    return (_Lazy(parts, "embedding", self.embedding_dim), _Lazy(parts, "quality", None))


class _Started:
  """One started request; `outputs()` waits for it once and keeps copies of its first n
  rows ({name: array})."""

  def __init__(self, request, n: int, names):
    self.request, self.n, self.names, self._out = request, n, names, None

  def outputs(self) -> dict:
    if self._out is None:
      self.request.wait()
      self._out = {name: np.array(self.request.get_output_tensor(i).data[:self.n])
                   for i, name in enumerate(self.names)}
    return self._out


class _Lazy:
  """One output of a call (its chunks concatenated), computed when read as an array."""

  def __init__(self, parts, name: str, width: int | None):
    self.parts, self.name, self.width = parts, name, width

  def __array__(self, dtype=None, copy=None):
    if self.width == 0:
      out = np.zeros((sum(p.n for p in self.parts), 0), np.float32)
    else:
      out = np.concatenate([p.outputs()[self.name] for p in self.parts]).astype(np.float32)
    return out if dtype is None else out.astype(dtype)

  def __len__(self) -> int:
    return sum(p.n for p in self.parts)

