"""CR-FIQA on real photos on a CPU (trained IG-FIQA-style): CelebA identities, judged on unseen people.

  python -m crfiqa_jax.prepare celeba CELEBA_ROOT data/celeba
  python -m crfiqa_jax.main --config=celeba --workdir=runs/celeba --config.data_dir=data/celeba

`prepare celeba` aligns every face (CelebA's landmarks, or MTCNN), holds out whole
identities as verification pairs and writes the rest as the training split; the main job
trains on the training split and then writes the real-face report (crfiqa_jax.evaluation.realfaces):
ERC tables of the learned quality against random, face size, detector confidence,
sharpness and any `--config.compare_quality=NAME=PATH` model, under the model's own
embeddings and, with the [dlib] extra, dlib's. benchmarks/real_faces.py runs it over seeds
and variants; docs/real-faces.md has the figures, the variants tried and why these values.

Sized for a public CelebA sample (~6,300 photos of ~300 identities) on a 2-core CPU: the
demo's tiny iResNet and its recipe (ArcFace s = 32 with insightface's θ+m>π guard, no
dropout, peak lr 0.05 at batch 64; the released s = 64 and dropout 0.4 need far more
identities than this) at 112 px for 12 epochs, trained with IG-FIQA.
"""

import ml_collections

from crfiqa_jax.configs import base, demo


def get_config():
  c = demo.get_config()      # the demo's recipe: tiny iResNet, s = 32 with the guard, ...
  c.synthetic = ml_collections.ConfigDict()  # ... but real photos from data_dir,
  c.image_size = 112                         # at the aligned crops' full size,
  c.num_epochs = 12
  c.lr_decay_epochs = (7, 11)
  c.eval_batch_size = 128
  # IG-FIQA (Kim et al., 2024): the quality head regresses the CR of an augmented copy of
  # each batch (downscaled, jittered, grey, erased: the low-quality photos real data holds),
  # weighted by each class's running CCS; the FR model itself trains on the clean batch.
  # It ranked the held-out pairs best of every variant tried (docs/real-faces.md), at twice
  # a CR-FIQA step's cost. --config.method=crfiqa is the simple path. Real photos get the
  # full-strength augmentation, not the demo's milder one (its faces are degraded already).
  c.method = "igfiqa"
  c.ig_augment = base.get_config().ig_augment
  return c
