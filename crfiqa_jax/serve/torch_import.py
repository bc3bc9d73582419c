"""Released PyTorch CR-FIQA weights → Flax variables, by the layer plan.

`from_torch(path_or_state_dict, arch)` maps every tensor of an insightface/CR-FIQA iResNet
state_dict onto `models.IResNet*` variables by walking the model's layer plan
(models.layer_plan names each layer's PyTorch module): conv OIHW → HWIO, Linear (out, in) →
(in, out), the FC weight permuted from PyTorch's (C, H, W) flatten order to our (H, W, C)
(models.fc_kernel_order), BatchNorm weight/bias/running stats → scale/bias/mean/var, PReLU
slopes, the `qs` quality head. It is strict: every tensor is used exactly once and every
shape checked. `load_torch` adds the detection of the architecture from the block counts;
`load_centres` reads the class centres of a trained model's classification head. Files
are read by crfiqa_jax.serve.pth (safely, torch optional).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax import models
from crfiqa_jax.serve.pth import load_object, load_state_dict


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
    obj = np.load(path, allow_pickle=False) if path.suffix == ".npy" else load_object(path)
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
  sd = path_or_state_dict
  if isinstance(sd, (str, Path)):
    sd = load_state_dict(sd)
  sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in _strip_prefix(sd).items()}
  fc = sd.get("fc.weight")
  model = models.create_model(arch, embedding_dim=fc.shape[0] if fc is not None else 512)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
  layers, flat_in = _plan_index(model)
  used, missing, bad_shapes = set(), [], []
  variables = {}
  for collection, tree in abstract.items():
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    values = []
    for path, leaf in leaves:
      names = tuple(getattr(k, "key", str(k)) for k in path)
      key, value, problem = _tensor_for(sd, layers[names[:-1]], names[-1], leaf.shape,
                                        flat_in.get(names[:-1]))
      if value is None:
        (missing if problem is None else bad_shapes).append(problem or key)
        value = np.zeros(leaf.shape, leaf.dtype)
      if key in sd:
        used.add(key)
      values.append(value)
    variables[collection] = jax.tree_util.tree_unflatten(treedef, values)
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


def _plan_index(model) -> tuple[dict, dict]:
  """({Flax module path: plan layer}, {path of a dense layer after a flatten: the channels
  of the flattened map}) of a model's plan and quality head."""
  layers, flat_in, channels = {}, {}, None
  for path, layer in models.walk(model.plan() + (models.QUALITY_HEAD,)):
    layers[path] = layer
    if layer.op == "flatten":
      channels = layer.features
    elif layer.op == "dense" and channels is not None:
      flat_in[path], channels = channels, None
  return layers, flat_in


def _tensor_for(sd: dict, layer, leaf: str, shape: tuple, flat_channels: int | None):
  """(PyTorch name, the Flax leaf `leaf` of `layer` from it or None, problem or None): None
  with no problem when the tensor is missing, None with the problem when it does not fit."""
  key = f"{layer.torch}.{_LEAF[leaf]}"
  if key not in sd:
    return key, None, None
  t = sd[key].astype(np.float32)
  try:
    if layer.op == "conv":
      t = t.transpose(2, 3, 1, 0)  # OIHW → HWIO
    elif layer.op == "dense" and t.ndim == 2:
      t = t.T  # Linear (out, in) → (in, out)
      if flat_channels is not None:  # PyTorch flattened (C, H, W); this model (H, W, C)
        t = models.fc_kernel_order(t, flat_channels, to="flax")
  except ValueError as e:
    return key, None, f"{key}: {e}"
  if t.shape != tuple(shape):
    return key, None, f"{key}: file {t.shape} vs model {tuple(shape)}"
  return key, t, None


def has_quality_head(state_dict: Mapping[str, Any]) -> bool:
  return any(k.split(".", 1)[0] == "qs" for k in _strip_prefix(state_dict))


def load_torch(path: str | Path, arch: str | None = None, *, qs_optional: bool = False):
  """(variables, info) of a .pth file; `arch` is detected from the block counts if None."""
  sd = _strip_prefix(load_state_dict(path))
  arch = arch or detect_arch(sd)
  if arch is None:
    raise ValueError(f"cannot tell the architecture of {path}; pass --arch")
  variables = from_torch(sd, arch, qs_optional=qs_optional)
  return variables, {"arch": arch, "embedding_dim": variables["params"]["fc"]["bias"].shape[0],
                     "image_size": 112, "source": str(path), "has_qs": has_quality_head(sd)}
