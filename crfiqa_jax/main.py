"""Entry point: python -m crfiqa_jax.main --config=NAME --workdir=DIR [--config.key=value ...]

NAME resolves to configs/NAME.py (or give a path to a .py file with get_config()).
All logic lives in importable modules; this file only parses, initialises and dispatches.
Multi-host: pass --coordinator=HOST:PORT --num_processes=N --process_id=I (or nothing on a
TPU pod, where jax.distributed finds its peers itself with --distributed).
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import sys
from pathlib import Path

import ml_collections

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
  pass


def config_path(name: str) -> Path:
  """configs/NAME.py next to the package (or in the working directory), or a file path."""
  if name.endswith(".py") or "/" in name:
    path = Path(name)
  else:
    candidates = [REPO_ROOT / "configs" / f"{name}.py", Path.cwd() / "configs" / f"{name}.py"]
    path = next((p for p in candidates if p.exists()), candidates[0])
  if not path.exists():
    available = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py")
                       if not p.stem.startswith("_"))
    raise ConfigError(f"No config {name!r} ({path} does not exist). Available: {available}")
  return path


def load_config(name: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """Loads configs/NAME.py:get_config() and applies 'key=value' overrides (dotted keys)."""
  path = config_path(name)
  root = str(path.resolve().parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)  # lets configs import each other as `configs.base`
  spec = importlib.util.spec_from_file_location(f"_crfiqa_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, raw in (overrides or {}).items():
    set_override(config, key, raw)
  config.lock()
  return config


def _valid_keys(config, prefix="") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys += _valid_keys(v, prefix + k + ".")
  return keys


def set_override(config: ml_collections.ConfigDict, key: str, raw: str):
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise ConfigError(f"Unknown config key {key!r}. Valid keys: {', '.join(_valid_keys(config))}")
  old = node[leaf]
  if isinstance(old, str):
    value = raw
  elif isinstance(old, bool):
    if raw.lower() not in ("true", "false", "1", "0"):
      raise ConfigError(f"--config.{key} expects true/false, got {raw!r}")
    value = raw.lower() in ("true", "1")
  else:
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f"--config.{key}={raw!r} is not a valid {type(old).__name__}") from e
    if isinstance(old, float) and isinstance(value, int):
      value = float(value)
    if isinstance(old, (tuple, list)) and isinstance(value, (int, float)):
      value = (value,)
    if isinstance(old, tuple) and isinstance(value, list):
      value = tuple(value)
    if type(value) is not type(old) and not (old is None):
      raise ConfigError(f"--config.{key}={raw!r}: expected {type(old).__name__}, "
                        f"got {type(value).__name__}")
  node[leaf] = value


def split_argv(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates --config.key=value overrides from the other flags."""
  rest, overrides = [], {}
  for arg in argv:
    if arg.startswith("--config."):
      key, sep, value = arg[len("--config."):].partition("=")
      if not sep:
        raise ConfigError(f"{arg}: overrides take the form --config.key=value")
      overrides[key] = value
    else:
      rest.append(arg)
  return rest, overrides


def main(argv: list[str] | None = None):
  from absl import app, flags

  argv = list(sys.argv if argv is None else argv)
  try:
    rest, overrides = split_argv(argv)
  except ConfigError as e:
    sys.exit(f"error: {e}")

  flags.DEFINE_string("config", None, "config name (configs/NAME.py) or path", required=True)
  flags.DEFINE_string("workdir", None, "checkpoints, metrics and reports go here",
                      required=True)
  flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (TPU pods, "
                    "SLURM, or with --coordinator)")
  flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-process CPU/GPU)")
  flags.DEFINE_integer("num_processes", None, "number of processes")
  flags.DEFINE_integer("process_id", None, "this process's index")
  FLAGS = flags.FLAGS

  def _main(_):
    import jax
    # Our progress at INFO; the libraries' (orbax, grain, tfds) chatter only from WARNING.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("crfiqa_jax").setLevel(logging.INFO)
    if FLAGS.distributed or FLAGS.coordinator:
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator,
                                 num_processes=FLAGS.num_processes,
                                 process_id=FLAGS.process_id)
    try:
      config = load_config(FLAGS.config, overrides)
    except ConfigError as e:
      sys.exit(f"error: {e}")
    from crfiqa_jax import train
    try:
      train.train_and_evaluate(config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
      logging.debug("traceback", exc_info=True)
      sys.exit(f"error: {e}")

  app.run(_main, argv=rest)


if __name__ == "__main__":
  main()
