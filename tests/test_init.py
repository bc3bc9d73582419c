"""The root package: `import crfiqa_jax` is light (no jax) and gives __version__, the one
version every other place reads (installed metadata, --version, CITATION.cff, CHANGELOG.md);
the API names load on first use."""

import importlib.metadata
import re
import subprocess
import sys

import pytest

import crfiqa_jax
from crfiqa_jax import cli
from helpers import ROOT


def test_import_is_light_and_gives_the_version():
  code = ("import sys, crfiqa_jax; print(crfiqa_jax.__version__); "
          "print(sorted(m for m in ('jax', 'numpy', 'crfiqa_jax.serve') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout.split("\n")
  assert out[0] == crfiqa_jax.__version__ and out[1] == "[]", out
  assert re.fullmatch(r"\d+\.\d+\.\d+", crfiqa_jax.__version__)


def test_one_version_everywhere():
  v = crfiqa_jax.__version__
  assert importlib.metadata.version("crfiqa_jax") == v, "reinstall: pip install -e ."
  assert cli.version() == f"crfiqa_jax {v}"
  assert re.search(rf"^version: \"?{re.escape(v)}\"?$", (ROOT / "CITATION.cff").read_text(),
                   re.M)
  assert re.search(rf"^## \[?{re.escape(v)}\]?", (ROOT / "CHANGELOG.md").read_text(), re.M)
  assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()


def test_api_names_load_on_first_use():
  from crfiqa_jax import Scorer, score_photos
  from crfiqa_jax.serve import photos, scorer
  assert Scorer is scorer.Scorer and score_photos is photos.score_photos
  assert {"Scorer", "score_photos", "PhotoScore", "__version__"} <= set(dir(crfiqa_jax))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    crfiqa_jax.nope
