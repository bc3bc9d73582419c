"""Released PyTorch CR-FIQA weights → Flax variables, with or without torch installed.

    python -m crfiqa_jax.convert --torch=181952backbone.pth --arch=iresnet100 --out=DIR

`from_torch(path_or_state_dict, arch)` maps every tensor of an insightface/CR-FIQA iResNet
state_dict onto `models.IResNet*` variables by walking the model's layer plan
(models.layer_plan names each layer's PyTorch module): conv OIHW → HWIO, Linear (out, in) →
(in, out), the FC weight permuted from PyTorch's (C, H, W) flatten order to our (H, W, C)
(models.fc_kernel_order), BatchNorm weight/bias/running stats → scale/bias/mean/var, PReLU
slopes, the `qs` quality head. It is strict: every tensor is used exactly once and every
shape checked. `load_torch` adds the architecture's detection; crfiqa_jax.checkpoints loads
every other kind of model path. The CLI writes an exported model directory
(`save_inference`).

`.pth` files are read with `torch.load(weights_only=True)` when torch is installed, else by
`read_pth`, a reader of PyTorch's zip format whose unpickler rebuilds tensors from the
archive's storages and refuses every other global, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from crfiqa_jax import cli, models

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  pass


def _bfloat16():
  import ml_dtypes
  return ml_dtypes.bfloat16


class _TorchZipUnpickler(pickle.Unpickler):
  """Admits only the globals a tensor state_dict needs; storages come from the zip."""

  def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._zf, self._prefix, self._byteorder = zf, prefix, byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      import collections
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, hooks, *a: data
    if module == "torch" and (name in _STORAGE_DTYPES or name == "BFloat16Storage"):
      return name
    raise UnsafeCheckpointError(
        f"refusing to load global {module}.{name}: only tensors, storages and OrderedDicts "
        "may appear in a weights file")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid[:5]
    if storage_type == "BFloat16Storage":
      dtype = np.dtype(_bfloat16())
    elif storage_type in _STORAGE_DTYPES:
      dtype = np.dtype(_STORAGE_DTYPES[storage_type])
    else:
      raise UnsafeCheckpointError(f"unsupported storage type {storage_type!r}")
    if key not in self._storages:
      name = f"{self._prefix}data/{key}"
      try:
        raw = self._zf.read(name)
      except KeyError as e:
        raise ValueError(f"weights file lacks storage {name}") from e
      arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if self._byteorder == "little"
                                                         else ">"))
      if len(arr) < numel:
        raise ValueError(f"storage {name} holds {len(arr)} elements, {numel} expected")
      self._storages[key] = arr.astype(dtype)  # native byte order, owned copy
    return self._storages[key]


def _rebuild_tensor(storage, offset, size, stride, *unused):
  if not isinstance(storage, np.ndarray):
    raise UnsafeCheckpointError("tensor without a storage")
  size, stride = tuple(size), tuple(stride)
  if not size:
    return storage[offset].copy()
  needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
  if any(s == 0 for s in size):
    return np.zeros(size, storage.dtype)
  if needed > len(storage):
    raise ValueError("tensor extends past its storage")
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=[st * storage.itemsize for st in stride])
  return np.array(view)


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
  """Reads a PyTorch zip checkpoint (torch ≥ 1.6 format) into numpy arrays, without torch."""
  return _as_state_dict(_read_pth_object(path), path)


def _read_pth_object(path: str | Path):
  """The unpickled object of a PyTorch zip checkpoint (a state_dict, a bare tensor, or a
  dict of those), through the restricted unpickler."""
  path = Path(path)
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a PyTorch zip checkpoint (files from torch < 1.6 use a "
                     "legacy format: re-save them with torch.save in a newer torch)")
  try:
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
      pkl = [n for n in names if n.endswith("data.pkl")]
      if len(pkl) != 1:
        raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
      prefix = pkl[0][: -len("data.pkl")]
      byteorder = "little"
      if f"{prefix}byteorder" in names:
        byteorder = zf.read(f"{prefix}byteorder").decode().strip()
      return _TorchZipUnpickler(zf.read(pkl[0]), zf, prefix, byteorder).load()
  except (zipfile.BadZipFile, EOFError, OSError) as e:  # a cut or damaged archive
    raise ValueError(f"{path} is a damaged PyTorch checkpoint: {e}") from None


def _as_state_dict(obj, path) -> dict[str, np.ndarray]:
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} does not hold a state_dict (got {type(obj).__name__})")
  return dict(obj)


def _load_object(path: str | Path):
  """torch.load(weights_only=True) with tensors as numpy when torch is installed, else
  `_read_pth_object`."""
  try:
    import torch
  except ImportError:
    return _read_pth_object(path)
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    why = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"{path} is not a readable PyTorch checkpoint: {why}") from None

  def to_numpy(v):
    if isinstance(v, torch.Tensor):
      return v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    if isinstance(v, Mapping):
      return {k: to_numpy(x) for k, x in v.items()}
    return v
  return to_numpy(obj)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """torch.load(weights_only=True) when torch is installed, else `read_pth`."""
  return _as_state_dict(_load_object(path), path)


def load_centres(paths: str | Path | list, embedding_dim: int) -> np.ndarray:
  """Class centres [D, C] from the classification-head files of a trained FR model.

  Accepted (each `.pth`/`.pt` loaded safely, or a `.npy` without pickles):
    * the released CR-FIQA `{step}header.pth`: a state_dict with `kernel` [D, C];
    * insightface arcface_torch: a state_dict with `weight` [C, D] (ArcFace / partial-FC
      head, also nested under `state_dict_softmax_fc` in `checkpoint_gpu_{rank}.pt`), or a
      bare tensor [C, D] (older partial-FC `rank_{r}_softmax_weight.pt`);
    * a `.npy` array, [D, C] or [C, D].
  Several paths (a list, or one string with commas) are the class shards of a partial-FC
  run, concatenated along the class axis in the order given (rank 0 first).
  """
  if isinstance(paths, (str, Path)):
    paths = [p for p in str(paths).split(",") if p]
  parts = []
  for path in paths:
    path = Path(path)
    if not path.exists():
      raise FileNotFoundError(f"centre file {path} does not exist")
    obj = np.load(path, allow_pickle=False) if path.suffix == ".npy" else _load_object(path)
    parts.append(_centres_of(obj, path, embedding_dim))
  return np.concatenate(parts, axis=1)


def _centres_of(obj, path, d: int) -> np.ndarray:
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict_softmax_fc"), Mapping):
    obj = obj["state_dict_softmax_fc"]
  if isinstance(obj, Mapping):
    obj = _strip_prefix(obj)
    if "kernel" in obj:  # CR-FIQA / old insightface heads: [in_features, out_features]
      w = np.asarray(obj["kernel"], np.float32)
      if w.ndim == 2 and w.shape[0] == d:
        return w
    elif "weight" in obj:  # nn.Linear-style [out_features, in_features]
      w = np.asarray(obj["weight"], np.float32)
      if w.ndim == 2 and w.shape[1] == d:
        return w.T
    else:
      raise ValueError(f"{path}: no class-centre tensor ('kernel' [D, C] or 'weight' [C, D]) "
                       f"among {sorted(obj)[:10]}")
    raise ValueError(f"{path}: centre tensor of shape {w.shape} does not fit embedding size {d}")
  w = np.asarray(obj, np.float32)
  if w.ndim == 2 and w.shape[1] == d:
    return w.T
  if w.ndim == 2 and w.shape[0] == d:
    return w
  raise ValueError(f"{path}: expected a [C, {d}] or [{d}, C] centre matrix, got {w.shape}")


# ---------------------------------------------------------------------------------------
# Mapping.
# ---------------------------------------------------------------------------------------

_LEAF = {"kernel": "weight", "scale": "weight", "alpha": "weight", "bias": "bias",
         "mean": "running_mean", "var": "running_var"}  # Flax leaf → PyTorch tensor name


def _module_names(plan) -> set[str]:
  """The released PyTorch module names of a layer plan's residual stages."""
  return {layer.torch for _, layer in models.walk(plan) if layer.torch.startswith("layer")}


def detect_arch(state_dict: Mapping[str, Any]) -> str | None:
  """The arch whose residual stages have exactly the state_dict's `layer…` modules, if any."""
  have = {k.rsplit(".", 1)[0] for k in _strip_prefix(state_dict) if k.startswith("layer")
          and not k.endswith("num_batches_tracked")}
  for name in models.ARCHS:
    if _module_names(models.create_model(name).plan()) == have:
      return name
  return None


def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
  if sd and all(k.startswith("module.") for k in sd):
    return {k[len("module."):]: v for k, v in sd.items()}
  return dict(sd)


def from_torch(path_or_state_dict, arch: str, *, image_size: int = 112,
               qs_optional: bool = False) -> dict:
  """Flax variables {"params", "batch_stats"} for `models.create_model(arch)`.

  qs_optional: accept a plain ArcFace backbone (an insightface iResNet without the `qs`
  quality head); its qs kernel and bias are then zeros, to be replaced by a fresh head
  (`has_quality_head` tells whether the file had one).
  """
  import jax
  import jax.numpy as jnp

  sd = path_or_state_dict
  if isinstance(sd, (str, Path)):
    sd = load_state_dict(sd)
  sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in _strip_prefix(sd).items()}
  fc = sd.get("fc.weight")
  emb_dim = fc.shape[0] if fc is not None else 512
  model = models.create_model(arch, embedding_dim=emb_dim)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
  used: set[str] = set()
  missing, bad_shapes = [], []
  layers, flat_in = {}, {}  # Flax module path → plan layer; dense after a flatten → channels
  channels = None
  for path, layer in models.walk(model.plan() + (models.QUALITY_HEAD,)):
    layers[path] = layer
    if layer.op == "flatten":
      channels = layer.features
    elif layer.op == "dense" and channels is not None:
      flat_in[path], channels = channels, None

  def convert(collection, path, leaf):
    names = tuple(getattr(k, "key", str(k)) for k in path)
    layer = layers[names[:-1]]
    key = f"{layer.torch}.{_LEAF[names[-1]]}"
    if key not in sd:
      missing.append(key)
      return np.zeros(leaf.shape, leaf.dtype)
    t = sd[key].astype(np.float32)
    used.add(key)
    try:
      if layer.op == "conv":
        t = t.transpose(2, 3, 1, 0)  # OIHW → HWIO
      elif layer.op == "dense" and t.ndim == 2:
        t = t.T  # Linear (out, in) → (in, out)
        if names[:-1] in flat_in:  # PyTorch flattened (C, H, W); this model (H, W, C)
          t = models.fc_kernel_order(t, flat_in[names[:-1]], to="flax")
    except ValueError as e:
      bad_shapes.append(f"{key}: {e}")
      return np.zeros(leaf.shape, leaf.dtype)
    if t.shape != leaf.shape:
      bad_shapes.append(f"{key}: file {t.shape} vs model {leaf.shape}")
      return np.zeros(leaf.shape, leaf.dtype)
    return t

  variables = {col: jax.tree_util.tree_map_with_path(
      lambda p, l, col=col: convert(col, p, l), abstract[col]) for col in abstract}
  unexpected = sorted(k for k in sd if k not in used and not k.endswith("num_batches_tracked"))
  if qs_optional and not has_quality_head(sd):
    missing = [k for k in missing if k not in ("qs.weight", "qs.bias")]
  if missing or unexpected or bad_shapes:
    fits = detect_arch(sd)
    hint = f"; the file's block counts fit {fits!r}" if fits and fits != arch else ""
    raise ValueError(
        f"state_dict does not match {arch}{hint}. Missing: {missing[:10]}"
        f"{' …' if len(missing) > 10 else ''} ({len(missing)}); unexpected: {unexpected[:10]}"
        f"{' …' if len(unexpected) > 10 else ''} ({len(unexpected)}); shape mismatches: "
        f"{bad_shapes[:10]}")
  return variables


def has_quality_head(state_dict: Mapping[str, Any]) -> bool:
  return any(k.split(".", 1)[0] == "qs" for k in _strip_prefix(state_dict))


# ---------------------------------------------------------------------------------------
# The exported model directory this module's CLI writes (crfiqa_jax.checkpoints reads it).
# ---------------------------------------------------------------------------------------

MODEL_FILE = "model.json"      # arch, embedding_dim, image_size, source
VARIABLES_DIR = "variables"    # the Flax variables (orbax)


def load_torch(path: str | Path, arch: str | None = None, *, qs_optional: bool = False):
  """(variables, info) of a .pth file; `arch` is detected from the block counts if None."""
  sd = _strip_prefix(load_state_dict(path))
  arch = arch or detect_arch(sd)
  if arch is None:
    raise ValueError(f"cannot tell the architecture of {path}; pass --arch")
  variables = from_torch(sd, arch, qs_optional=qs_optional)
  return variables, {"arch": arch, "embedding_dim": variables["params"]["fc"]["bias"].shape[0],
                     "image_size": 112, "source": str(path), "has_qs": has_quality_head(sd)}


def save_inference(out_dir: str | Path, variables: dict, *, arch: str, embedding_dim: int,
                   image_size: int = 112, source: str = "") -> Path:
  """Writes an exported model directory: MODEL_FILE and VARIABLES_DIR."""
  import orbax.checkpoint as ocp
  out = Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  if (out / VARIABLES_DIR).exists():
    raise FileExistsError(f"{out}/{VARIABLES_DIR} exists; choose an empty --out")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out / VARIABLES_DIR, variables)
  (out / MODEL_FILE).write_text(json.dumps(
      {"arch": arch, "embedding_dim": embedding_dim, "image_size": image_size,
       "source": source}, indent=1))
  return out


def main(argv=None) -> int:
  """Exit code per crfiqa_jax.cli: 0 written, 2 a usage or input error."""
  p = cli.parser("crfiqa_jax.convert", __doc__,
                 "python -m crfiqa_jax.convert --torch=181952backbone.pth --arch=iresnet100 "
                 "--out=crfiqa_l")
  p.add_argument("--torch", required=True, help="PyTorch state_dict (.pth)")
  p.add_argument("--arch", default=None, help=f"one of {sorted(models.ARCHS)} (default: detect)")
  p.add_argument("--out", required=True, help="output directory (orbax)")
  p.add_argument("--allow-missing-qs", action="store_true",
                 help="accept a plain ArcFace backbone without the qs quality head (its "
                      "quality output is then 0 until a head is trained on top)")
  args = p.parse_args(argv)
  cli.quiet_logging()

  def body():
    if not Path(args.torch).is_file():
      raise FileNotFoundError(f"--torch {args.torch} does not exist")
    variables, info = load_torch(args.torch, args.arch, qs_optional=args.allow_missing_qs)
    out = save_inference(args.out, variables, arch=info["arch"],
                         embedding_dim=info["embedding_dim"], source=str(args.torch))
    import jax
    n = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
    print(f"Converted {args.torch} ({info['arch']}, {n:,} parameters) → {out}")

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())
