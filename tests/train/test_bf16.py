"""The bf16 compute path (--config.dtype=bfloat16): convolutions and dots in bf16, while
parameters, BN statistics and the loss/CR maths stay float32 and one step's numbers stay
within a stated tolerance of the float32 step."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax import sharding
from crfiqa_jax.train import config as config_lib
from crfiqa_jax.train.step import build_model
from crfiqa_jax.train.trainer import Trainer
from helpers import as_numpy
from helpers import TINY, batch as _batch

# Stated tolerances of one bf16 step against float32 (tiny model, same init and batch;
# measured: loss 6e-4 relative, batch-mean CR 3e-4 absolute).
LOSS_RTOL = 5e-3
CR_ATOL = 3e-3


def _step(dtype):
  # Dropout off so both runs see the same network; one device keeps it fast.
  config = config_lib.load_config("base", dict(TINY, dtype=dtype, dropout="0.0"))
  mesh = sharding.make_mesh(jax.devices()[:1])
  trainer = Trainer(config, num_classes=10, num_examples=160, mesh=mesh)
  state = trainer.init()
  batch = sharding.global_batch(_batch(), mesh)
  hlo = trainer.step_fn.lower(state, batch).as_text()
  state, metrics = trainer.step_fn(state, batch)
  return as_numpy(state), as_numpy(metrics), hlo


def test_bf16_step_matches_float32_within_tolerance():
  s32, m32, _ = _step("float32")
  s16, m16, hlo = _step("bfloat16")
  for k in ("loss", "loss_arc", "loss_cr"):
    np.testing.assert_allclose(m16[k], m32[k], rtol=LOSS_RTOL, err_msg=k)
  for k in ("cr", "ccs", "nnccs"):
    np.testing.assert_allclose(m16[k], m32[k], atol=CR_ATOL, err_msg=k)
  # The bf16 step really computed something different (else the test proves nothing).
  assert m16["loss"] != m32["loss"]

  # Parameters, optimiser slots and BN statistics stay float32 after the update.
  for tree in (s16.params, s16.batch_stats, s16.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if x.dtype.kind == "f"} == {np.dtype(np.float32)}

  # Every convolution (forward and backward) runs on bf16 operands ...
  convs = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
  assert convs and all("bf16" in c and "f32" not in c for c in convs)
  # ... while the [B, C] cosine matrix of the loss is a float32 dot of float32 operands.
  cos = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line
         and re.search(r"-> tensor<16x10xf32>", line)]
  assert cos and all("bf16" not in c for c in cos)


def test_bf16_model_returns_float32_embedding_and_quality():
  config = config_lib.load_config("base", dict(TINY, dtype="bfloat16"))
  model = build_model(config)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  emb, quality = model.apply(variables, x)
  assert emb.dtype == jnp.float32 and quality.dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
