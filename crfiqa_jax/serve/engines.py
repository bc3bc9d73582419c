"""Which engine runs a model's forward for scoring, and loading a predictor for any model path.

`score`, `evaluate`, `analyze` and the photo path (`score --detect`) take `--engine`:

* `jax` — the Flax model on the JAX backend's devices (`inference.FlaxPredictor`);
* `onnxruntime` — the same weights exported to ONNX (crfiqa_jax.serve.onnx_graph) and run
  by onnxruntime's CPU kernels (`onnx_predictor.OnnxPredictor`), with a session tuned by
  `session_options`;
* `auto` (the default) — onnxruntime when JAX's backend is the CPU and the model is an
  iResNet of the released widths (64-512 channels); JAX otherwise (GPU and TPU hosts, and
  narrow nets such as the demo's, which XLA:CPU's fused program runs faster).

The ONNX file is exported once per set of weights and cached (`onnx_file`): beside the
model when its folder is writable, else in `cache_dir()`. Its name holds `weights_key`, a
hash of every variable's path, dtype, shape and bytes, the architecture and the source of
crfiqa_jax/serve/onnx_graph.py and crfiqa_jax/models/iresnet.py, so changed weights (a new
checkpoint step, a re-converted .pth) or a changed exporter get a new file, never a stale
one. A new export is checked against the JAX model on random inputs (max relative
difference ≤ onnx_graph.TOLERANCE) before it is used.

`load_predictor(path)` runs any model path crfiqa_jax.serve.model_io knows: an .onnx file
directly in onnxruntime, every other kind on the chosen engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import onnxruntime as ort

from crfiqa_jax import faults, models
from crfiqa_jax.serve import inference, model_io, onnx_graph
from crfiqa_jax.serve.onnx_predictor import OnnxPredictor

log = logging.getLogger(__name__)

ENGINES = ("auto", "jax", "onnxruntime")
FORMAT = "1"  # part of every cache key, with the exporter's and the models' source


def add_argument(parser) -> None:
  """`--engine` on a command line (score, evaluate, analyze)."""
  parser.add_argument("--engine", default="auto", choices=ENGINES,
                      help="model forward: auto (onnxruntime on a CPU host for the released "
                           "widths, else JAX), jax or onnxruntime")


def choose(engine: str, model=None) -> str:
  """The engine `engine` resolves to on this host for `model` ("jax" or an onnxruntime one)."""
  if engine not in ENGINES:
    raise ValueError(f"--engine={engine!r}; choose one of {ENGINES}")
  exportable = model is None or _exportable(model)
  if engine != "auto":
    if engine != "jax" and not exportable:
      raise ValueError(f"--engine={engine} needs an iResNet (crfiqa_jax.models.IResNet); "
                       f"this model is a {type(model).__name__}")
    return engine
  if jax.default_backend() == "cpu" and exportable and _wide(model):
    return "onnxruntime"
  return "jax"


# onnxruntime wins on the released widths; on narrow nets (the demo's 8-64 channels) JAX's
# fused XLA:CPU program is faster (benchmarks/score.py --arch iresnet_tiny; docs/engines.md).
MIN_ONNX_WIDTH = 64


def _wide(model) -> bool:
  return model is None or min(getattr(model, "widths", (MIN_ONNX_WIDTH,))) >= MIN_ONNX_WIDTH


def _exportable(model) -> bool:
  return isinstance(model, models.IResNet)


def weights_key(model, variables, info: dict) -> str:
  """32 hex digits identifying the exported function: architecture, input size, the source
  of the exporter and of the models, and every variable (path, dtype, shape, bytes)."""
  h = hashlib.blake2b(digest_size=16)
  for module in (onnx_graph, models.iresnet):
    h.update(Path(module.__file__).read_bytes())
  h.update(repr((FORMAT, str(info.get("arch")), tuple(model.stage_sizes), tuple(model.widths),
                 int(model.embedding_dim), int(info.get("image_size", 112)))).encode())
  leaves = jax.tree_util.tree_flatten_with_path(
      {"params": variables["params"], "batch_stats": variables["batch_stats"]})[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def cache_dir() -> Path:
  """Where ONNX files go when the model's folder is not writable: $CRFIQA_JAX_CACHE, else
  $XDG_CACHE_HOME/crfiqa_jax, else ~/.cache/crfiqa_jax."""
  if os.environ.get("CRFIQA_JAX_CACHE"):
    return Path(os.environ["CRFIQA_JAX_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "crfiqa_jax"


def _writable(d: Path) -> bool:
  try:
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=d, prefix=".crfiqa_probe"):
      return True
  except OSError:
    return False


def cache_path(source, key: str) -> Path:
  """The cached ONNX file of weights `key` read from `source` (a model file or folder):
  SOURCE_DIR/onnx/ for a folder, beside a file as NAME.KEY.onnx, else under cache_dir()."""
  name = f"{key[:20]}.onnx"
  if source is not None:
    src = Path(source).absolute()
    d, stem = (src / "onnx", "") if src.is_dir() else (src.parent, src.name + ".")
    if _writable(d):
      return d / f"{stem}{name}"
  return cache_dir() / "onnx" / name


def _atomic_write(path: Path, data: bytes) -> None:
  """Readers (other processes of a multi-process run) see the whole file or none; a write
  refused for space is crfiqa_jax.faults.DiskFull naming the path and the bytes."""
  faults.write_atomic(path, data)


def onnx_file(model, variables, info: dict, *, source=None) -> Path:
  """The ONNX file computing (model, variables) in eval mode, exported and checked on first
  use, then read from the cache (see the module doc)."""
  key = weights_key(model, variables, info)
  path = cache_path(source, key)
  if path.is_file():
    log.info("onnxruntime engine: cached %s", path)
    return path
  log.info("onnxruntime engine: exporting the model once to %s", path)
  proto = onnx_graph.onnx_model(model, variables, info)
  tmp = path.with_name(path.name + f".check-{os.getpid()}")
  _atomic_write(tmp, proto.SerializeToString())
  try:
    diff = onnx_graph.verify_onnx(tmp, model, variables, "nchw", onnx_graph.OUTPUTS, "dynamic",
                               int(info.get("image_size", 112)))
    if max(diff.values()) > onnx_graph.TOLERANCE:
      raise ValueError(f"the ONNX export of {source} differs from the JAX model by {diff} "
                       "(relative); use --engine=jax")
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path


def cpu_threads() -> int:
  """Cores this process may run on (the affinity mask, e.g. a container's or taskset's)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def session_options(threads: int | None = None):
  """onnxruntime session options for this CPU: one intra-op thread per usable core, every
  graph optimisation (ORT_ENABLE_ALL: conv + BN + activation fusion and the layout
  transform to the blocked NCHWc kernels), sequential execution (the iResNet is a chain;
  ORT_PARALLEL only adds scheduling). docs/engines.md compares the other settings."""
  o = ort.SessionOptions()
  o.intra_op_num_threads = threads or cpu_threads()
  o.inter_op_num_threads = 1
  o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  o.log_severity_level = 3
  return o


def make_predictor(model, variables, info: dict, *, engine: str = "auto", source=None,
                   devices=None):
  """A predictor (crfiqa_jax.inference protocol) running (model, variables) on `engine`;
  `source`, the model's file or folder, places the ONNX cache beside it."""
  chosen = choose(engine, model)
  size = int(info.get("image_size", 112))
  if chosen == "jax":
    pred = inference.FlaxPredictor(model, variables, image_size=size, devices=devices)
    pred.engine = chosen
    return pred
  variables = inference.host_local(variables)
  path = onnx_file(model, variables, info, source=source)
  pred = OnnxPredictor(path, options=session_options())
  pred.engine = chosen
  return pred


def load_predictor(path, arch: str | None = None, engine: str = "auto"):
  """A predictor for any kind of model path: onnxruntime for .onnx, else the model on
  `engine` (see `choose`); a released model's name runs its converted directory."""
  path = model_io.resolve(path)
  if model_io.kind_of_existing(path) == "onnx":
    if engine == "jax":
      raise ValueError(f"{path} is an ONNX file: it runs on onnxruntime, not --engine=jax")
    return OnnxPredictor(path, options=session_options())
  model, variables, info = model_io.load_model(path, arch)
  return make_predictor(model, variables, info, engine=engine, source=path)
