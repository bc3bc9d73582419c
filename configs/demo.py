"""The CPU demo: tiny iResNet, synthetic faces, the full CR-FIQA loss, then an ERC check.

  python -m crfiqa_jax.main --config=demo --workdir=/tmp/crfiqa_demo

Generates 48×48 synthetic faces (crfiqa_jax.data.synthetic: 400 training identities × 40
images, 60 held-out identities × 10 images, each image degraded by blur, downscaling,
noise, occlusion, JPEG or exposure at a known severity) into WORKDIR/data (cached), trains
the tiny iResNet for 10 epochs through grain, the sharded jitted step and orbax, then
scores the held-out identities and writes WORKDIR/eval/metrics.json and WORKDIR/eval/erc.png.
About 8 minutes on a 2-core CPU, data included; docs/demo.md has the figures of seeds 0, 1
and 2 and how these values were chosen (benchmarks/demo_seeds.py).

Demo-only levers (configs small/large keep the released recipe, where all are off):
  scale = 32         ArcFace s: at the paper's 64 this 128-d tiny net on 400 classes
                     collapses (training CCS = NNCCS).
  dropout = 0        the released 0.4 before the FC layer starves a net this small.
  margin_fallback    insightface's θ+m>π guard (removes the all-anti-aligned optimum).
  lr = 0.4           peak 0.05 at batch 64 instead of the paper's 0.1, which can collapse
                     at s = 32.
  image_size = 48, num_epochs = 10, lr decays after epochs 6 and 9: what fits 10 minutes
                     of a 2-core CPU.
  ig_augment         IG-FIQA only (--config.method=igfiqa): a milder augmented copy (the
                     faces are degraded already).
"""

import ml_collections

from crfiqa_jax.configs import base


def get_config():
  c = base.get_config()
  c.model = "iresnet_tiny"
  c.embedding_dim = 128
  c.image_size = 48
  c.synthetic = ml_collections.ConfigDict(dict(
      identities=400, per_identity=40, eval_identities=60, eval_per_identity=10, seed=0))
  # A tiny net on 400 classes can fall into the released ArcFace's θ+m>π trap: all
  # embeddings anti-aligned with all centres, where cos(θ+m) ≈ -cos(m) beats cos θ ≈ -1 and
  # the ArcFace loss goes to ~0 while nothing is learned (seen on this CPU). insightface's
  # standard guard removes that optimum; configs small/large keep the released loss.
  c.margin_fallback = True
  c.scale = 32.0
  c.dropout = 0.0
  c.batch_size = 64
  c.lr = 0.4                 # peak 0.05 at batch 64
  c.num_epochs = 10
  c.lr_decay_epochs = (6, 9)
  c.data_workers = 1
  c.log_every = 100
  c.checkpoint_every = 500
  # IG-FIQA (--config.method=igfiqa): a milder augmented copy. The demo's training faces
  # are already degraded at random severities; the base augmentation on top of that (a
  # fifth of the side, a third of the face erased) left the quality branch regressing
  # mostly misclassified copies (augmented CCS < NNCCS).
  c.ig_augment.update(dict(p_rescale=0.25, min_scale=0.4, p_erase=0.25,
                           erase_area=(0.02, 0.2), p_jitter=0.25, p_gray=0.1))
  return c
