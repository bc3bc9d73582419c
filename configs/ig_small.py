"""IG-FIQA(S): CR-FIQA(S)'s recipe (iResNet50, CASIA-WebFace) with IG-FIQA's training.

  python -m crfiqa_jax.main --config=ig_small --workdir=runs/igfiqa_s \
      --config.data_dir=/data/casia

Per-class running CCS weights on the regression loss and an augmented copy of every batch
for the quality branch (docs/design.md, IG-FIQA); everything else as configs/small.py. Each step
runs the backbone twice (clean + augmented), so it costs about twice a CR-FIQA step.
"""

from crfiqa_jax.configs import small


def get_config():
  c = small.get_config()
  c.method = "igfiqa"
  return c
