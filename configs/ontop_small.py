"""The paper's "on top" ablation (S): a frozen FR model, only the quality head trains.

  python -m crfiqa_jax.main --config=ontop_small --workdir=runs/ontop_s \
      --config.data_dir=/data/casia --config.init_checkpoint=runs/arcface_s

The backbone of `init_checkpoint` runs in inference mode (BN running statistics, no
dropout) and stays frozen, as do the class centres; the `qs` head regresses the CR of
the frozen embeddings against the pretrained model's own centres (crfiqa_jax.warmstart:
a training workdir's centres, or --config.init_centres=HEADER.pth for the released
`{step}header.pth` / insightface softmax weights, else class means over the training set).
A plain ArcFace backbone without a `qs` layer is accepted; the head then starts fresh.
lr 0.01 (the paper), the same schedule as configs/small.py.
"""

from crfiqa_jax.configs import small


def get_config():
  c = small.get_config()
  c.trainable = "qs"
  c.lr = 0.01
  return c
