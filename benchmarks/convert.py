"""Released-weight import: agreement with PyTorch and conversion cost.

    python benchmarks/convert.py [--archs iresnet_tiny,iresnet18,iresnet50,iresnet100]

For each arch: a PyTorch iResNet in the released layout (tests/torch_iresnet.py) with
random weights and BN statistics, saved with torch.save; converted with the torch-free
reader (`torch_import.from_torch(path)` in a fresh process, so its peak RSS is the converter's);
embeddings and quality on 4 random faces compared in eval mode (max abs and max relative
difference, relative to the largest PyTorch magnitude). Needs the [torch] extra.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.modules["torch"] = None  # prove the torch-free path
from crfiqa_jax.serve import convert
from crfiqa_jax.serve import pth
from crfiqa_jax.serve import torch_import
t = time.perf_counter()
v = torch_import.from_torch(sys.argv[1], sys.argv[2])
dt = time.perf_counter() - t
np.savez(sys.argv[3], **{"/".join(map(str, k)): np.asarray(x) for k, x in
         __import__("jax").tree_util.tree_flatten_with_path(v)[0]})
print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--archs", default="iresnet_tiny,iresnet18,iresnet50,iresnet100")
  args = p.parse_args()
  import jax
  import torch

  import torch_iresnet
  from crfiqa_jax import models
  from crfiqa_jax.serve import pth
  from crfiqa_jax.serve import torch_import
  for arch in args.archs.split(","):
    ref = torch_iresnet.randomize_(torch_iresnet.make(arch)).eval()
    with tempfile.TemporaryDirectory() as tmp:
      pth = Path(tmp) / "w.pth"
      torch.save(ref.state_dict(), pth)
      mb = pth.stat().st_size / 2**20
      r = subprocess.run([sys.executable, "-c", CHILD, str(pth), arch, str(Path(tmp) / "v.npz")],
                         capture_output=True, text=True, check=True)
      cost = json.loads(r.stdout.strip().splitlines()[-1])
      variables = torch_import.from_torch(pth, arch)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 112, 112, 3)).astype(np.float32)
    with torch.no_grad():
      e_t, q_t = (t.numpy() for t in ref(torch.from_numpy(x.transpose(0, 3, 1, 2))))
    model = models.create_model(arch, embedding_dim=e_t.shape[1])
    e, q = (np.asarray(t) for t in jax.jit(lambda v, x: model.apply(v, x))(variables, x))
    print(f"{arch:13s} file {mb:6.1f} MiB  convert {cost['seconds']:5.2f} s  peak RSS "
          f"{cost['peak_rss_mb']:6.0f} MiB  |Δemb| {np.abs(e - e_t).max():.2e} "
          f"(rel {np.abs(e - e_t).max() / np.abs(e_t).max():.2e})  |Δq| "
          f"{np.abs(q - q_t).max():.2e} (rel {np.abs(q - q_t).max() / np.abs(q_t).max():.2e})",
          flush=True)


if __name__ == "__main__":
  main()
