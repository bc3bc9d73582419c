"""PyTorch weight files (.pth/.pt) read safely, with or without torch installed.

`load_state_dict(path)` → {name: numpy array}: through `torch.load(weights_only=True)` when
torch is installed, else through `read_pth`, a reader of PyTorch's zip format (torch ≥ 1.6)
whose unpickler rebuilds tensors from the archive's storages and refuses every other
global, so a crafted file cannot run code. `load_object` gives the unpickled object itself
(a state_dict, a bare tensor, or a dict of those), e.g. for classification-head files.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np
import ml_dtypes

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
  pass


def _bfloat16():
  return ml_dtypes.bfloat16


class _TorchZipUnpickler(pickle.Unpickler):
  """Admits only the globals a tensor state_dict needs; storages come from the zip."""

  def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._zf, self._prefix, self._byteorder = zf, prefix, byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
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


def load_object(path: str | Path):
  """torch.load(weights_only=True) with tensors as numpy when torch is installed, else
  `_read_pth_object`."""
  try:
    import torch  # the [torch] extra: its own loader when installed
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
  return _as_state_dict(load_object(path), path)
