"""PyTorch weight files read safely without torch: the same tensors as torch.load, and a
pickle that would run code refused before it runs."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from crfiqa_jax.serve import pth


def test_torch_free_reader_matches_torch_load(tmp_path):
  torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
  import torch_iresnet  # tests/torch_iresnet.py, needs torch
  ref = torch_iresnet.randomize_(torch_iresnet.make("iresnet_tiny"))
  sd = ref.state_dict()
  sd["extra_half"] = torch.randn(4, 5).half()
  sd["extra_bf16"] = torch.randn(3).bfloat16()
  sd["strided"] = torch.randn(6, 4).t()  # non-contiguous view
  path = tmp_path / "w.pth"
  torch.save(sd, path)
  ours = pth.read_pth(path)
  theirs = torch.load(path, weights_only=True)
  assert set(ours) == set(theirs)
  for k, v in theirs.items():
    want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    np.testing.assert_array_equal(np.asarray(ours[k], dtype=want.dtype), want, err_msg=k)
    assert ours[k].shape == tuple(v.shape)


def test_malicious_pickle_is_refused_without_running(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("evil/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    zf.writestr("evil/byteorder", "little")
  with pytest.raises(pth.UnsafeCheckpointError, match="posix.system|os.system"):
    pth.read_pth(path)
  assert not marker.exists()
  with pytest.raises(ValueError, match="not a PyTorch zip"):
    (tmp_path / "legacy.pth").write_bytes(b"\x80\x02not a zip")
    pth.read_pth(tmp_path / "legacy.pth")


def test_damaged_archives_are_clear_errors(tmp_path):
  (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
  with pytest.raises(ValueError, match="not a PyTorch zip|damaged"):
    pth.read_pth(tmp_path / "cut.pth")
  with zipfile.ZipFile(tmp_path / "two.pth", "w") as zf:
    zf.writestr("a/data.pkl", pickle.dumps({}))
    zf.writestr("b/data.pkl", pickle.dumps({}))
  with pytest.raises(ValueError, match="expected one data.pkl"):
    pth.read_pth(tmp_path / "two.pth")
  with zipfile.ZipFile(tmp_path / "list.pth", "w") as zf:
    zf.writestr("m/data.pkl", pickle.dumps([1, 2]))
  with pytest.raises(ValueError, match="does not hold a state_dict"):
    pth.read_pth(tmp_path / "list.pth")
