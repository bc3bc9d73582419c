"""Every kind of model path, and the one place that loads them.

  "workdir"   a training workdir: WORKDIR/config.json (the run's config, written by train)
              and WORKDIR/checkpoints/ (orbax steps of the train state and data position);
  "exported"  an exported Flax model: DIR/model.json (arch, embedding_dim, image_size,
              source) and DIR/variables/ (orbax), written by `python -m crfiqa_jax.convert`
              (convert.save_inference, where these two names live);
  "torch"     a released PyTorch state_dict, FILE.pth or FILE.pt (crfiqa_jax.convert maps it);
  "onnx"      FILE.onnx written by `python -m crfiqa_jax.export`, run by onnxruntime.

`model_kind(path)` names the kind; `load_model` gives (Flax model, variables, info) for the
first three; `load_predictor` gives a predictor (crfiqa_jax.inference's protocol) for all
four. Every command loads models through here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crfiqa_jax import convert, inference, models
from crfiqa_jax.onnx_predictor import OnnxPredictor

CONFIG_FILE = "config.json"        # a workdir's config
CHECKPOINTS_DIR = "checkpoints"    # a workdir's orbax steps
MODEL_FILE = convert.MODEL_FILE    # an exported directory: named beside its writer
VARIABLES_DIR = convert.VARIABLES_DIR
TORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIX = ".onnx"
KINDS_TEXT = (f"a training workdir ({CONFIG_FILE} + {CHECKPOINTS_DIR}/), an exported model "
              f"directory ({MODEL_FILE}), a released PyTorch .pth/.pt or an .onnx file")


def model_kind(path) -> str | None:
  """The kind of `path`: "workdir", "exported", "torch", "onnx", or None (none of these)."""
  p = Path(path)
  if p.suffix.lower() in TORCH_SUFFIXES:
    return "torch"
  if p.suffix.lower() == ONNX_SUFFIX:
    return "onnx"
  if (p / MODEL_FILE).is_file():
    return "exported"
  if (p / CONFIG_FILE).is_file():
    return "workdir"
  return None


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _kind_of_existing(path: Path) -> str:
  kind = model_kind(path)
  if kind is None or (kind in ("torch", "onnx") and not path.is_file()):
    what = "does not exist" if not path.exists() else "is not a model"
    raise FileNotFoundError(f"{path} {what}: expected {KINDS_TEXT}")
  return kind


def load_model(path, arch: str | None = None, *, qs_optional: bool = False):
  """(model, variables, info) of a workdir, an exported directory or a .pth file (`arch`
  names its architecture, else it is detected from the block counts).

  info: arch, embedding_dim, image_size, source, has_qs (False for a .pth ArcFace backbone
  read with qs_optional), and for a workdir its config `config`, `step` and class centres
  `centres` [D, C'] (C' is padded to the device count when class sharding was on).
  """
  path = Path(path).absolute()
  kind = _kind_of_existing(path)
  if kind == "onnx":
    raise ValueError(f"{path} is an ONNX file: it runs in onnxruntime (score, evaluate, "
                     "ijbc take it) but has no Flax variables; use the workdir, exported "
                     "directory or .pth it was exported from")
  if kind == "torch":
    variables, info = convert.load_torch(path, arch, qs_optional=qs_optional)
  elif kind == "exported":
    import orbax.checkpoint as ocp
    info = json.loads((path / MODEL_FILE).read_text())
    try:
      with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(path / VARIABLES_DIR)
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path / VARIABLES_DIR} cannot be read: {_first_line(e)}") from e
  else:
    cfg, state, step = read_workdir(path)
    variables = inference.inference_variables(state)
    info = {"arch": cfg["model"], "embedding_dim": cfg["embedding_dim"],
            "image_size": cfg["image_size"], "source": f"{path} step {step}",
            "step": int(step), "config": cfg, "centres": state["params"]["centres"]}
  return models.create_model(info["arch"], embedding_dim=info["embedding_dim"]), variables, info


def load_predictor(path, arch: str | None = None, engine: str = "auto"):
  """A predictor for any kind of model path: onnxruntime for .onnx, else the model on
  `engine` (crfiqa_jax.engines: "auto" runs it through onnxruntime on a CPU host, through
  crfiqa_jax.inference.FlaxPredictor on this process's devices otherwise)."""
  from crfiqa_jax import engines
  path = Path(path)
  if _kind_of_existing(path) == "onnx":
    if engine == "jax":
      raise ValueError(f"{path} is an ONNX file: it runs on onnxruntime, not --engine=jax")
    return OnnxPredictor(path, options=engines.session_options())
  model, variables, info = load_model(path, arch)
  return engines.make_predictor(model, variables, info, engine=engine, source=path)


def read_workdir(workdir) -> tuple[dict, dict, int]:
  """(config dict, train-state tree of numpy arrays, step) of a training workdir's latest
  checkpoint, without building the optimiser, whatever device count wrote it."""
  import jax
  import orbax.checkpoint as ocp
  workdir = Path(workdir).absolute()
  if not (workdir / CONFIG_FILE).exists():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no {CONFIG_FILE})")
  import grain
  # The data position is not read, but naming its handler keeps orbax from warning about it.
  mgr = ocp.CheckpointManager(workdir / CHECKPOINTS_DIR,
                              item_handlers={"state": ocp.StandardCheckpointHandler(),
                                             "data": grain.checkpoint.CheckpointHandler()})
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f"{workdir}/{CHECKPOINTS_DIR} holds no checkpoint yet")
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    meta = mgr.item_metadata(step)
    meta = meta["state"] if "state" in meta else meta
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one), meta,
        is_leaf=lambda m: hasattr(m, "shape"))
    state = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))["state"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{workdir}/{CHECKPOINTS_DIR} step {step} cannot be read: "
                     f"{_first_line(e)}") from e
  finally:
    mgr.close()
  return (json.loads((workdir / CONFIG_FILE).read_text()), jax.tree.map(np.asarray, state),
          step)
