"""CR-FIQA(L): iResNet100 on MS1MV2 (85,742 identities, 5.8M images).

  python -m crfiqa_jax.prepare insightface /data/faces_emore /data/ms1mv2
  python -m crfiqa_jax.main --config=large --workdir=runs/crfiqa_l \
      --config.data_dir=/data/ms1mv2

Expects the insightface MS1MV2 package ("faces_emore": train.rec/train.idx/property)
converted with `prepare`. Recipe of the paper: global batch 512, SGD lr 0.1, 18 epochs with
×0.1 at epochs 8 and 14 (the paper's 100K/160K iterations, stop at 180K). For millions of
identities add --config.shard_centres=true.
"""

from crfiqa_jax.configs import base


def get_config():
  c = base.get_config()
  c.model = "iresnet100"
  c.batch_size = 512
  c.lr = 0.1
  c.num_epochs = 18
  c.lr_decay_epochs = (8, 14)
  c.paper_num_classes = 85742
  c.paper_num_examples = 5822653
  return c
