"""Which engine and precision run a model's forward for scoring, and loading a predictor
for any model path.

`score`, `evaluate`, `analyze`, the photo path (`score --detect`) and
`Scorer.from_checkpoint` take an engine and a precision:

* `jax` — the Flax model on the JAX backend's devices (`inference.FlaxPredictor`), in
  float32 or with bfloat16 computation (the model's `dtype`);
* `onnxruntime` — the same weights exported to ONNX (crfiqa_jax.serve.onnx_graph) and run
  by onnxruntime's CPU kernels (`onnx_predictor.OnnxPredictor`), float32, with a session
  tuned by `session_options`;
* `openvino` — that ONNX file compiled by OpenVINO's CPU plugin (extra [openvino];
  `openvino_predictor.OpenVinoPredictor`), float32, or bfloat16 on CPUs with bfloat16
  matrix units.

`auto` is a rule on this host, with no timing at start-up (so every run picks the same
program): on the CPU backend, for an iResNet (exportable to ONNX),

1. a CPU with bfloat16 units (flag `amx_bf16` or `avx512_bf16` in /proc/cpuinfo, the
   `cpu_flags` of this module) and OpenVINO installed: openvino in bf16;
2. otherwise, the released widths (64-512 channels): onnxruntime in float32;
3. otherwise (narrow nets such as the demo's, which XLA:CPU's fused program runs faster than
   onnxruntime): jax in float32.

Where the outputs feed an ERC table or serve as face recognition features (evaluate,
analyze, IJB-C, the held-out report's comparison models: `exact=True`), `auto` precision is
float32 and the rule goes on from 2: bfloat16 keeps the ranking of the quality scores
(Spearman ≥ 0.999 on real faces), but moves ERC AUCs computed from its quality or its
features by a few units of their fourth decimal, so every printed table is computed in
float32 (docs/engines.md).

GPU and TPU backends, and models that are not iResNets, run on jax in float32. A precision
given alone picks the fastest engine that has it (bf16: openvino where rule 1 holds, else
jax); an engine given alone takes its fastest precision here (openvino: bf16 where the CPU
has bfloat16 units, else fp32). Combinations this host does not offer (onnxruntime in
bf16, bf16 on openvino without bfloat16 units, int8, which no engine offers because it does
not keep the ranking) are refused with a one-line error. `offered` lists what the host runs.

The ONNX file is exported once per set of weights and cached (`onnx_file`): beside the
model when its folder is writable, else in `cache_dir()`. Its name holds `weights_key`, a
hash of every variable's path, dtype, shape and bytes, the architecture and the source of
crfiqa_jax/serve/onnx_graph.py and crfiqa_jax/models/iresnet.py, so changed weights (a new
checkpoint step, a re-converted .pth) or a changed exporter get a new file, never a stale
one. A new export is checked against the JAX model on random inputs (max relative
difference ≤ onnx_graph.TOLERANCE) before it is used. For an exported directory a `.files`
note beside it, named by `files_key` (the directory's file names, sizes, times and inodes),
lets later runs take the ONNX file without reading the variables while those hold. OpenVINO
keeps its compiled models in an `openvino/` folder beside the ONNX file (or `cache_dir()`).

`load_predictor(path)` runs any model path crfiqa_jax.serve.model_io knows: an .onnx file
on onnxruntime or openvino, every other kind on the chosen engine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort

from crfiqa_jax import cli, faults, models
from crfiqa_jax.serve import inference, model_io, onnx_graph
from crfiqa_jax.serve.onnx_predictor import OnnxPredictor
from crfiqa_jax.serve.openvino_predictor import OpenVinoPredictor

log = logging.getLogger(__name__)

ENGINES = ("auto", "jax", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bfloat16 matrix units
FORMAT = "1"  # part of every cache key, with the exporter's and the models' source


def add_argument(parser) -> None:
  """`--engine` and `--precision` on a command line (score, evaluate, analyze)."""
  parser.add_argument("--engine", default="auto", choices=ENGINES,
                      help="model forward: auto (this host's fastest that keeps the ranking: "
                           "see --precision), jax, onnxruntime or openvino ([openvino] extra)")
  parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                      help="auto: bf16 on openvino where the CPU has AMX or AVX512-BF16 and "
                           "the extra is installed (fp32 where ERC tables or FR features are "
                           "computed: evaluate, analyze), else fp32 "
                           "(onnxruntime for the released widths, JAX for narrow nets); bf16 "
                           "also runs on jax; int8 is refused (it does not keep the ranking)")


@functools.cache
def cpu_flags() -> frozenset[str]:
  """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
  try:
    return parse_flags(Path("/proc/cpuinfo").read_text())
  except OSError:
    return frozenset()


def parse_flags(cpuinfo: str) -> frozenset[str]:
  """The words of the first `flags` line of a /proc/cpuinfo text."""
  for line in cpuinfo.splitlines():
    if line.startswith("flags"):
      return frozenset(line.partition(":")[2].split())
  return frozenset()


def bf16_cpu() -> bool:
  """The CPU has bfloat16 matrix units (AMX-BF16 or AVX512-BF16)."""
  return bool(cpu_flags() & set(BF16_FLAGS))


def have_openvino() -> bool:
  """The [openvino] extra is installed."""
  return importlib.util.find_spec("openvino") is not None


def choose(engine: str = "auto", precision: str = "auto", model=None, *,
           onnx_only: bool = False, exact: bool = False) -> tuple[str, str]:
  """(engine, precision) that `engine` and `precision` resolve to on this host for `model`
  (None: an iResNet of the released widths); onnx_only: an ONNX file, which jax cannot run;
  exact: the outputs feed an ERC table or FR features (precision "auto" is then fp32).
  Raises ValueError (cli.MissingExtra for a missing extra) for what the host does not offer."""
  if engine not in ENGINES:
    raise ValueError(f"--engine={engine!r}; choose one of {ENGINES}")
  if precision not in PRECISIONS:
    raise ValueError(f"--precision={precision!r}; choose one of {PRECISIONS}")
  exportable = model is None or _exportable(model)
  if engine not in ("auto", "jax") and not exportable:
    raise ValueError(f"--engine={engine} needs an iResNet (crfiqa_jax.models.IResNet); "
                     f"this model is a {type(model).__name__}")
  if precision == "auto" and exact:
    precision = "fp32"
  if engine == "auto":
    engine = _auto_engine(precision, model, exportable, onnx_only)
  if precision == "auto":
    precision = "bf16" if engine == "openvino" and bf16_cpu() else "fp32"
  _check(engine, precision, onnx_only)
  return engine, precision


def _auto_engine(precision: str, model, exportable: bool, onnx_only: bool) -> str:
  """Rules 1-3 of the module doc (precision given: the fastest engine that has it)."""
  cpu = jax.default_backend() == "cpu" or onnx_only
  vino = cpu and exportable and bf16_cpu()
  if vino and precision in ("auto", "bf16") and not have_openvino():
    _suggest_openvino()
  if vino and precision in ("auto", "bf16") and have_openvino():
    return "openvino"
  if precision == "bf16" and not onnx_only:
    return "jax"
  if precision == "int8":
    return "openvino" if onnx_only or exportable else "jax"  # refused by _check
  if cpu and exportable and (onnx_only or _wide(model)):
    return "onnxruntime"
  return "jax"


@functools.cache
def _suggest_openvino() -> None:
  log.info("this CPU has bfloat16 units (AMX or AVX512-BF16): pip install "
           "'crfiqa_jax[openvino]' scores several times faster on it (docs/engines.md)")


def _check(engine: str, precision: str, onnx_only: bool) -> None:
  """Refuses (engine, precision) pairs this host does not run, in one line each."""
  if precision == "int8":
    raise ValueError("--precision=int8 is not offered: int8 quantisation does not keep the "
                     "ranking of quality scores (docs/engines.md); use fp32 or bf16")
  if engine == "jax" and onnx_only:
    raise ValueError("an ONNX file runs on onnxruntime or openvino, not --engine=jax"
                     + (" (bf16 needs openvino)" if precision == "bf16" else ""))
  if engine == "onnxruntime" and precision != "fp32":
    raise ValueError(f"--engine=onnxruntime runs fp32 only; {precision} runs on openvino "
                     "(CPUs with AMX or AVX512-BF16) or jax")
  if engine == "openvino":
    if not have_openvino():
      raise cli.MissingExtra("openvino", "--engine=openvino")
    if precision == "bf16" and not bf16_cpu():
      raise ValueError("--precision=bf16 on openvino needs a CPU with AMX or AVX512-BF16 "
                       f"(flags {', '.join(BF16_FLAGS)}); this one has neither: use fp32")


def offered(model=None) -> list[tuple[str, str]]:
  """Every (engine, precision) this host runs for `model` (None: an iResNet)."""
  pairs = [("jax", "fp32"), ("jax", "bf16")]
  if model is None or _exportable(model):
    pairs.append(("onnxruntime", "fp32"))
    if have_openvino():
      pairs += [("openvino", "fp32")] + [("openvino", "bf16")] * bf16_cpu()
  return pairs


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
    log.info("ONNX export: cached %s", path)
    return path
  log.info("ONNX export: writing the model once to %s", path)
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


def files_key(folder: Path) -> str:
  """32 hex digits naming an exported directory (its path and model_io.files_fingerprint),
  FORMAT and the exporter's and models' source."""
  h = hashlib.blake2b(digest_size=16)
  for module in (onnx_graph, models.iresnet):
    h.update(Path(module.__file__).read_bytes())
  files = model_io.files_fingerprint(folder, skip=("onnx", "openvino"))
  h.update(f"{FORMAT}|{folder.absolute()}|{files}".encode())
  return h.hexdigest()


def _files_note(folder: Path) -> Path:  # a file naming the ONNX file made from `folder`
  return cache_path(folder, files_key(folder)).with_suffix(".files")


def _cached_exported(path: Path, note: Path, engine: str, precision: str, exact: bool):
  """Exported directory `path`'s predictor from the ONNX file its `.files` note names, without
  reading the variables; None when there is none or the choice is jax."""
  info = model_io.read_info(path)
  model = models.create_model(info["arch"], embedding_dim=info["embedding_dim"])
  engine, precision = choose(engine, precision, model, exact=exact)
  onnx_path = note.parent / (note.read_text().strip() if note.is_file() else "-")
  if engine == "jax" or not onnx_path.is_file():
    return None
  log.info("model forward: %s, %s", engine, precision)
  log.info("ONNX export: cached %s (the model's files are unchanged)", onnx_path)
  return onnx_predictor(onnx_path, engine, precision)


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


def compiled_cache(onnx_path: Path) -> Path | None:
  """Where OpenVINO keeps the compiled forms of `onnx_path`: an `openvino/` folder beside
  it, else under cache_dir(), else nowhere (compiled on every run)."""
  for d in (Path(onnx_path).absolute().parent / "openvino", cache_dir() / "openvino"):
    if _writable(d):
      return d
  return None


def onnx_predictor(path, engine: str, precision: str):
  """An ONNX file on onnxruntime or openvino, set up for this CPU; its attributes `engine`,
  `precision` and `onnx_path` say what runs."""
  pred = (OnnxPredictor(path, options=session_options()) if engine == "onnxruntime" else
          OpenVinoPredictor(path, precision, threads=cpu_threads(), cache_dir=compiled_cache(path)))
  pred.engine, pred.precision, pred.onnx_path = engine, precision, Path(path)
  return pred


def make_predictor(model, variables, info: dict, *, engine: str = "auto",
                   precision: str = "auto", exact: bool = False, source=None,
                   devices=None):
  """A predictor (crfiqa_jax.inference protocol) running (model, variables) on `engine` in
  `precision` (see `choose`; features: its embeddings serve as FR features); `source`, the
  model's file or folder, places the ONNX cache beside it. Its attributes `engine` and
  `precision` say what was chosen."""
  engine, precision = choose(engine, precision, model, exact=exact)
  log.info("model forward: %s, %s", engine, precision)
  if engine == "jax":
    net = model.clone(dtype=jnp.bfloat16) if precision == "bf16" else model
    pred = inference.FlaxPredictor(net, variables, image_size=int(info.get("image_size", 112)),
                                   devices=devices)
  else:
    path = onnx_file(model, inference.host_local(variables), info, source=source)
    pred = onnx_predictor(path, engine, precision)
  pred.engine, pred.precision = engine, precision
  return pred


def load_predictor(path, arch: str | None = None, engine: str = "auto",
                   precision: str = "auto", *, exact: bool = False):
  """A predictor for any kind of model path: an .onnx file on onnxruntime or openvino, else
  the model on `engine` in `precision` (see `choose`; features: the embeddings serve as FR
  features); a released model's name runs its converted directory."""
  path = model_io.resolve(path)
  kind = model_io.kind_of_existing(path)
  if kind == "onnx":
    return onnx_predictor(path, *choose(engine, precision, onnx_only=True, exact=exact))
  note = _files_note(path) if kind == "exported" else None
  if note and (pred := _cached_exported(path, note, engine, precision, exact)) is not None:
    return pred
  model, variables, info = model_io.load_model(path, arch)
  pred = make_predictor(model, variables, info, engine=engine, precision=precision,
                        exact=exact, source=path)
  if note and pred.engine != "jax":
    with contextlib.suppress(OSError):  # only a shortcut for the next run
      faults.write_atomic(note, pred.onnx_path.name.encode())
  return pred
