"""crfiqa_jax: CR-FIQA and IG-FIQA face image quality in JAX/Flax.

    import crfiqa_jax
    crfiqa_jax.__version__                         # "0.2.0"
    from crfiqa_jax import Scorer, score_photos    # the Python API (docs/api.md)

`import crfiqa_jax` stays light (no jax, no model code): the API names are looked up in
`_API` and their modules imported on first use (PEP 562 `__getattr__`), the way the `crfiqa`
console script imports a command's module only when it runs (docs/design.md).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# Public name → the module that defines it.
_API = {"Scorer": "crfiqa_jax.serve.scorer", "score_photos": "crfiqa_jax.serve.photos",
        "PhotoScore": "crfiqa_jax.serve.photos"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
  if name not in _API:
    raise AttributeError(f"module 'crfiqa_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_API[name]), name)
  globals()[name] = value  # later look-ups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_API))
