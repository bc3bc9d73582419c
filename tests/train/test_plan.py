"""plan: the real train step AOT-compiled for a TPU topology on this CPU host (libtpu)."""

import json

import jax
import numpy as np
import pytest

pytest.importorskip("libtpu", reason="plan compiles for TPU through libtpu: pip install -e "
                    "'.[tpu]'")

from crfiqa_jax.train import config as config_lib
from crfiqa_jax import sharding
from crfiqa_jax.train import plan
from crfiqa_jax.train.trainer import Trainer
from helpers import TINY  # noqa: E402

CLASSES = 4000  # enough centres ([32, 4000] f32 = 500 KiB, and as much momentum) to see
OVERRIDES = dict(TINY, batch_size="16")


def _conv_macs(size=32, widths=(8, 16, 32, 64), emb=32):
  """Multiply-adds of the tiny iResNet's convolutions and FC for one 32×32 image."""
  macs, c_in, s = size * size * 3 * widths[0] * 9, widths[0], size  # stem
  for w in widths:  # one block per stage: conv1 at s, conv2 (stride 2) and 1×1 shortcut at s/2
    macs += s * s * c_in * w * 9 + (s // 2) ** 2 * (w * w * 9 + c_in * w)
    c_in, s = w, s // 2
  return macs + s * s * c_in * emb


@pytest.fixture(scope="module")
def replicated():
  config = config_lib.load_config("base", OVERRIDES)
  devices = plan.topology_devices("v5e:2x2")
  return plan.plan(config, devices, num_classes=CLASSES, num_examples=160, hours=1.0), config


def test_plan_reports_memory_flops_and_time(replicated):
  r, config = replicated
  assert (r["devices"], r["chips"], r["processes"]) == (4, 4, 1)
  assert r["hbm_bytes"] == 16 * 2**30 and r["fits"]
  m = r["memory"]
  assert r["per_device_bytes"] == m["argument"] + m["temp"] + m["output"] - m["alias"]
  # The donated state is aliased to the new state, and the arguments hold at least the
  # whole replicated state (params, momentum, BN statistics) plus a quarter of the batch.
  trainer = Trainer(config, num_classes=CLASSES, num_examples=160,
                          mesh=sharding.make_mesh(jax.devices()[:4]))
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state))
  assert m["argument"] >= state_bytes + 16 * 32 * 32 * 3 // 4
  assert m["alias"] >= 0.9 * state_bytes
  # Global FLOPs: at least forward + two backward passes of the convolutions, and not far
  # above (BN, the loss and the optimiser add little).
  conv = 3 * 2 * _conv_macs() * 16
  assert conv <= r["flops_per_step"] <= 1.6 * conv
  # Times follow from the FLOPs and the v5e peak (197 TFLOP/s per chip).
  step = r["flops_per_step"] / (4 * 197e12)
  np.testing.assert_allclose(r["step_time_at_peak_s"], step, rtol=1e-9)
  np.testing.assert_allclose(r["mfu_needed"], r["total_steps"] * step / 3600, rtol=1e-9)
  assert r["total_steps"] == 34 * (160 // 16)


def test_cli_json_and_sharded_centres(replicated, capsys):
  r, _ = replicated
  plan.main(["--config=base", "--topology=v5e:2x2", f"--num_classes={CLASSES}",
             "--num_examples=160", "--json", "--config.shard_centres=true",
             *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]])
  s = json.loads(capsys.readouterr().out)
  assert {"devices", "processes", "per_device_bytes", "hbm_bytes", "fits",
          "flops_per_step"} <= set(s)
  assert s["shard_centres"] and s["num_classes_padded"] == CLASSES
  # Splitting the centres and their momentum over 4 devices saves 3/4 of them per device.
  saved = r["memory"]["argument"] - s["memory"]["argument"]
  np.testing.assert_allclose(saved, 0.75 * 2 * 32 * CLASSES * 4, rtol=0.1)


def test_too_many_classes_do_not_fit():
  # 100M replicated centres: [32, 1e8] f32 = 12.8 GB, and as much gradient and momentum.
  config = config_lib.load_config("base", OVERRIDES)
  r = plan.plan(config, plan.topology_devices("v5e:2x2"), num_classes=10**8,
                num_examples=160)
  assert not r["fits"] and r["flops_per_step"] is None and "HBM" in r["error"]
  assert r["per_device_bytes"] > 2 * 32 * 10**8 * 4 > r["hbm_bytes"]  # centres + gradient


def test_clear_errors(capsys):
  with pytest.raises(ValueError, match="cannot describe topology 'v99:2x2'"):
    plan.topology_devices("v99:2x2")
  assert plan.main(["--config=base", "--topology=v5e:2x2"]) == 2
  assert "names no dataset size" in capsys.readouterr().err
