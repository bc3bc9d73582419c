"""Config loading: a named config shipped with the package, or the user's file, with
`--config.key=value` overrides.

`--config=NAME` names a module of crfiqa_jax.configs (the repository's configs/ folder:
base, demo, small, large, ccs_small, ...); a path names the user's own .py file with
get_config() (it may start from `from crfiqa_jax.configs import base`). An override of an
unknown key fails with the list of valid keys; a value of the wrong type fails naming the
key.
"""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import importlib.util
from pathlib import Path

import ml_collections

CONFIG_PACKAGE = "crfiqa_jax.configs"


class ConfigError(ValueError):
  pass


def available_configs() -> list[str]:
  """Names of the configs shipped with the package."""
  files = importlib.resources.files(CONFIG_PACKAGE)
  return sorted(p.name[:-3] for p in files.iterdir()
                if p.name.endswith(".py") and not p.name.startswith("_"))


def _config_module(name: str):
  """The module of a named config, or of a user's config file."""
  if name.endswith(".py") or "/" in name or "\\" in name:
    path = Path(name)
    if not path.exists():
      raise ConfigError(f"No config file {path}. Named configs: {available_configs()}")
    spec = importlib.util.spec_from_file_location(f"_crfiqa_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  if name not in available_configs():
    raise ConfigError(f"No config {name!r}. Named configs: {available_configs()} "
                      "(or pass a path to your own .py file with get_config())")
  return importlib.import_module(f"{CONFIG_PACKAGE}.{name}")


def load_config(name: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """A named config (or a config file) with 'key=value' overrides (dotted keys) applied."""
  config = _config_module(name).get_config()
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
