import functools

import jax
import numpy as np
import pytest

from crfiqa_jax import models
from crfiqa_jax.serve import model_io
from crfiqa_jax.serve import torch_import

torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
import torch_iresnet  # noqa: E402  (tests/torch_iresnet.py, needs torch)


def _compare(arch, image_size=112, batch=3, tmp_path=None):
  ref = torch_iresnet.randomize_(torch_iresnet.make(arch, image_size=image_size)).eval()
  x = np.random.default_rng(0).uniform(-1, 1, (batch, image_size, image_size, 3)).astype(
      np.float32)
  with torch.no_grad():
    emb_t, q_t = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  variables = torch_import.from_torch(ref.state_dict(), arch, image_size=image_size)
  model = models.create_model(arch, embedding_dim=emb_t.shape[1])
  emb, q = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  emb_t, q_t = emb_t.numpy(), q_t.numpy()
  rel_emb = np.abs(np.asarray(emb) - emb_t).max() / np.abs(emb_t).max()
  rel_q = np.abs(np.asarray(q) - q_t).max() / max(np.abs(q_t).max(), 1e-6)
  return rel_emb, rel_q, ref


@pytest.mark.parametrize("arch,size", [("iresnet_tiny", 112), ("iresnet18", 112)])
def test_converted_model_matches_pytorch(arch, size):
  rel_emb, rel_q, _ = _compare(arch, size)
  assert rel_emb < 1e-4 and rel_q < 1e-4, (rel_emb, rel_q)


@pytest.mark.slow
def test_iresnet50_matches_pytorch():
  rel_emb, rel_q, _ = _compare("iresnet50", batch=2)
  assert rel_emb < 1e-4 and rel_q < 1e-4, (rel_emb, rel_q)


def test_dataparallel_prefix_and_file_paths(tmp_path):
  ref = torch_iresnet.randomize_(torch_iresnet.make("iresnet_tiny"))
  path = tmp_path / "dp.pth"
  torch.save({"module." + k: v for k, v in ref.state_dict().items()}, path)
  a = torch_import.from_torch(path, "iresnet_tiny")
  b = torch_import.from_torch(ref.state_dict(), "iresnet_tiny")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  model, variables, info = model_io.load_model(path)  # arch detected from block counts
  assert info["arch"] == "iresnet_tiny"


def test_mismatch_names_keys_and_fitting_arch():
  ref = torch_iresnet.randomize_(torch_iresnet.make("iresnet18"))
  with pytest.raises(ValueError, match="fit 'iresnet18'.*Missing"):
    torch_import.from_torch(ref.state_dict(), "iresnet34")
  sd = dict(ref.state_dict())
  sd["bonus.weight"] = torch.zeros(3)
  with pytest.raises(ValueError, match="unexpected: \\['bonus.weight'\\]"):
    torch_import.from_torch(sd, "iresnet18")


def test_plain_arcface_backbone_without_qs_when_asked(tmp_path):
  ref = torch_iresnet.randomize_(torch_iresnet.make("iresnet_tiny")).eval()
  sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("qs.")}
  with pytest.raises(ValueError, match="qs.weight"):
    torch_import.from_torch(sd, "iresnet_tiny")
  variables = torch_import.from_torch(sd, "iresnet_tiny", qs_optional=True)
  np.testing.assert_array_equal(variables["params"]["qs"]["kernel"], 0.0)
  want = torch_import.from_torch(ref.state_dict(), "iresnet_tiny")
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                want["params"]["fc"]["kernel"])
  path = tmp_path / "arcface.pth"
  torch.save(sd, path)
  _, _, info = model_io.load_model(path, qs_optional=True)
  assert info["has_qs"] is False
  assert model_io.load_model(tmp_path / "arcface.pth", "iresnet_tiny", qs_optional=True)[2][
      "arch"] == "iresnet_tiny"


def test_load_centres_from_released_and_insightface_heads(tmp_path):
  d, c = 8, 10
  w = np.random.default_rng(0).normal(size=(d, c)).astype(np.float32)  # [D, C]
  # Released CR-FIQA {step}header.pth: CR_FIQA_LOSS.kernel [in_features=D, out_features=C].
  torch.save({"kernel": torch.from_numpy(w)}, tmp_path / "32572header.pth")
  np.testing.assert_array_equal(torch_import.load_centres(tmp_path / "32572header.pth", d), w)
  # insightface: a head state_dict with weight [C, D], the same nested in a training
  # checkpoint, and partial-FC shards saved as bare [C/2, D] tensors, rank order.
  torch.save({"weight": torch.from_numpy(w.T.copy())}, tmp_path / "fc.pt")
  torch.save({"state_dict_softmax_fc": {"weight": torch.from_numpy(w.T.copy())},
              "epoch": 3}, tmp_path / "checkpoint_gpu_0.pt")
  for r in range(2):
    torch.save(torch.from_numpy(w.T[5 * r:5 * (r + 1)].copy()),
               tmp_path / f"rank_{r}_softmax_weight.pt")
  np.save(tmp_path / "c.npy", w.T)
  for spec in (tmp_path / "fc.pt", tmp_path / "checkpoint_gpu_0.pt", tmp_path / "c.npy",
               f"{tmp_path}/rank_0_softmax_weight.pt,{tmp_path}/rank_1_softmax_weight.pt"):
    np.testing.assert_array_equal(torch_import.load_centres(spec, d), w, err_msg=str(spec))
  with pytest.raises(ValueError, match="does not fit embedding size 16"):
    torch_import.load_centres(tmp_path / "32572header.pth", 16)


def test_an_architecture_variant_converts_and_exports_without_other_edits(monkeypatch, tmp_path):
  """A new architecture is one entry in models.ARCHS: conversion (arch detected from the
  released-layout state_dict) and ONNX export both walk models.layer_plan, so the variant
  reproduces an independent PyTorch model of it, and onnxruntime reproduces the Flax model."""
  import onnxruntime as ort
  from crfiqa_jax.serve import onnx_graph
  stages, widths = (2, 1, 3, 1), (8, 16, 16, 24)
  monkeypatch.setitem(models.ARCHS, "iresnet_variant", functools.partial(
      models.IResNet, stage_sizes=stages, widths=widths, embedding_dim=24))
  ref = torch_iresnet.randomize_(torch_iresnet.TorchIResNet(stages, widths, emb=24),
                                 seed=5).eval()
  torch.save(ref.state_dict(), tmp_path / "variant.pth")
  model, variables, info = model_io.load_model(tmp_path / "variant.pth")
  assert info["arch"] == "iresnet_variant" and info["embedding_dim"] == 24
  x = np.random.default_rng(2).uniform(-1, 1, (3, 112, 112, 3)).astype(np.float32)
  with torch.no_grad():
    emb_t, q_t = (t.numpy() for t in ref(torch.from_numpy(x.transpose(0, 3, 1, 2))))
  emb, q = (np.asarray(t) for t in model.apply(variables, x, train=False))
  np.testing.assert_allclose(emb, emb_t, rtol=0, atol=1e-4 * np.abs(emb_t).max())
  np.testing.assert_allclose(q, q_t, rtol=0, atol=1e-4 * np.abs(q_t).max())
  onnx_file = tmp_path / "variant.onnx"
  onnx_file.write_bytes(onnx_graph.onnx_model(model, variables, info).SerializeToString())
  sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
  emb_o, q_o = sess.run(["embedding", "quality"], {"input": x.transpose(0, 3, 1, 2).copy()})
  np.testing.assert_allclose(emb_o, emb, rtol=0, atol=1e-4 * np.abs(emb).max())
  np.testing.assert_allclose(q_o, q, rtol=0, atol=1e-4 * np.abs(q).max())


def test_fc_kernel_order_round_trips_and_matches_the_two_flattens():
  """Row r of the (H, W, C) order holds what row r' of the (C, H, W) order holds, where both
  index the same map element; and the two directions invert each other."""
  c, side, d = 3, 2, 5
  fmap = np.arange(side * side * c, dtype=np.float64).reshape(side, side, c)  # (H, W, C)
  w_flax = np.random.default_rng(0).normal(size=(side * side * c, d))
  w_torch = models.fc_kernel_order(w_flax, c, to="torch")
  np.testing.assert_allclose(fmap.reshape(-1) @ w_flax,
                             fmap.transpose(2, 0, 1).reshape(-1) @ w_torch)
  np.testing.assert_array_equal(models.fc_kernel_order(w_torch, c, to="flax"), w_flax)
  with pytest.raises(ValueError, match="square map"):
    models.fc_kernel_order(np.zeros((10, d)), c, to="torch")
