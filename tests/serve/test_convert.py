"""`python -m crfiqa_jax.convert`: a released-layout .pth → an exported model directory that
every command reads back, equal to the PyTorch model."""

import numpy as np
import pytest

from crfiqa_jax.serve import convert, model_io


def test_convert_cli_and_reload(tmp_path):
  torch = pytest.importorskip("torch", reason="the [torch] extra is not installed")
  import torch_iresnet  # tests/torch_iresnet.py, needs torch
  ref = torch_iresnet.randomize_(torch_iresnet.make("iresnet_tiny")).eval()
  path = tmp_path / "w.pth"
  torch.save(ref.state_dict(), path)
  convert.main([f"--torch={path}", "--arch=iresnet_tiny", f"--out={tmp_path / 'out'}"])
  model, variables, info = model_io.load_model(tmp_path / "out")
  assert info["arch"] == "iresnet_tiny"
  x = np.zeros((1, 112, 112, 3), np.float32)
  with torch.no_grad():
    want = ref(torch.zeros(1, 3, 112, 112))[1].numpy()
  np.testing.assert_allclose(model.apply(variables, x)[1], want, rtol=1e-4, atol=1e-5)


def test_missing_file_is_one_error_line(tmp_path, capsys):
  assert convert.main([f"--torch={tmp_path / 'none.pth'}", f"--out={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --torch") and "does not exist" in err[0]
