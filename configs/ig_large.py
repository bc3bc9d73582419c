"""IG-FIQA(L): CR-FIQA(L)'s recipe (iResNet100, MS1MV2) with IG-FIQA's training.

  python -m crfiqa_jax.main --config=ig_large --workdir=runs/igfiqa_l \
      --config.data_dir=/data/ms1mv2 [--config.shard_centres=true]

As configs/large.py (16 epochs, the released CR-FIQA(L) length) with --config.method=igfiqa:
per-class running CCS weights and an augmented copy of every batch for the quality branch
(docs/design.md, IG-FIQA). Each step runs the backbone twice.
"""

from crfiqa_jax.configs import large


def get_config():
  c = large.get_config()
  c.method = "igfiqa"
  return c
