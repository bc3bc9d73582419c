"""Released PyTorch CR-FIQA weights → an exported Flax model directory.

    python -m crfiqa_jax.convert --torch=181952backbone.pth --arch=iresnet100 --out=DIR

The weights are mapped by crfiqa_jax.serve.torch_import (read safely, with or without
torch); the directory (model.json + orbax variables) is what crfiqa_jax.serve.model_io
reads back, and any command taking --checkpoint accepts it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from crfiqa_jax import cli, models
from crfiqa_jax.serve import model_io, torch_import


def main(argv=None) -> int:
  """Exit code per crfiqa_jax.cli: 0 written, 2 a usage or input error."""
  p = cli.parser("crfiqa_jax.convert", __doc__,
                 "python -m crfiqa_jax.convert --torch=181952backbone.pth --arch=iresnet100 "
                 "--out=crfiqa_l")
  p.add_argument("--torch", required=True, help="PyTorch state_dict (.pth)")
  p.add_argument("--arch", default=None, help=f"one of {sorted(models.ARCHS)} (default: detect)")
  p.add_argument("--out", required=True, help="output directory (orbax)")
  p.add_argument("--allow-missing-qs", action="store_true",
                 help="accept a plain ArcFace backbone without the qs quality head (its "
                      "quality output is then 0 until a head is trained on top)")
  args = p.parse_args(argv)
  cli.quiet_logging()

  def body():
    if not Path(args.torch).is_file():
      raise FileNotFoundError(f"--torch {args.torch} does not exist")
    variables, info = torch_import.load_torch(args.torch, args.arch,
                                              qs_optional=args.allow_missing_qs)
    out = model_io.save_exported(args.out, variables, arch=info["arch"],
                                 embedding_dim=info["embedding_dim"], source=str(args.torch))
    n = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
    print(f"Converted {args.torch} ({info['arch']}, {n:,} parameters) → {out}")

  return cli.run(body)
