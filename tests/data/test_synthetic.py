"""The demo's synthetic faces: deterministic, labelled, degraded by severity, cached with
their parameters checked."""

import numpy as np
import pytest

from crfiqa_jax.data import synthetic
from crfiqa_jax.train import config as config_lib


def test_generator_is_deterministic_and_labelled():
  a = list(synthetic.samples(3, 4, seed=7, size=32))
  b = list(synthetic.samples(3, 4, seed=7, size=32))
  c = list(synthetic.samples(3, 4, seed=8, size=32))
  assert [x["image"] for x in a] == [x["image"] for x in b]
  assert [x["image"] for x in a] != [x["image"] for x in c]
  assert [x["label"] for x in a] == [0] * 4 + [1] * 4 + [2] * 4
  for x in a:
    assert x["metadata"]["kind"] in synthetic.KINDS and 0 <= x["metadata"]["severity"] <= 1
  held_out = list(synthetic.samples(2, 2, seed=7, size=32, first_identity=3))
  assert {x["metadata"]["identity"] for x in held_out} == {3, 4}  # disjoint from 0..2
  assert [x["label"] for x in held_out] == [0, 0, 1, 1]


def test_degradations_hurt_more_with_severity():
  rng = np.random.default_rng(0)
  ident = synthetic.make_identity(rng)
  clean = synthetic.render(ident, np.random.default_rng(1), 64)
  ref = (clean * 255).astype(np.float64)
  for kind in synthetic.KINDS:
    errs = [np.abs(synthetic.degrade(clean, kind, s, np.random.default_rng(2)) - ref).mean()
            for s in (0.05, 0.5, 1.0)]
    assert errs[0] < errs[1] < errs[2], (kind, errs)


def test_synthetic_cache_is_checked(tmp_path):
  cfg = config_lib.load_config("demo", {"synthetic.identities": "3", "synthetic.per_identity": "2",
                                  "synthetic.eval_identities": "2",
                                  "synthetic.eval_per_identity": "2",
                                  "data_dir": str(tmp_path / "d")})
  synthetic.ensure_dataset(cfg)
  synthetic.ensure_dataset(cfg)  # same parameters: reused
  other = config_lib.load_config("demo", {"synthetic.identities": "4", "synthetic.per_identity": "2",
                                    "synthetic.eval_identities": "2",
                                    "synthetic.eval_per_identity": "2",
                                    "data_dir": str(tmp_path / "d")})
  with pytest.raises(ValueError, match="identities: cached 3 vs config 4"):
    synthetic.ensure_dataset(other)
