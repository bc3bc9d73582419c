"""CR-FIQA(S): iResNet50 on CASIA-WebFace (10,572 identities, ~0.49M images).

  python -m crfiqa_jax.prepare insightface /data/faces_webface_112x112 /data/casia
  python -m crfiqa_jax.main --config=small --workdir=runs/crfiqa_s \
      --config.data_dir=/data/casia

Expects the insightface CASIA-WebFace package (train.rec/train.idx/property) converted
with `prepare`. Recipe of the paper: global batch 512, SGD lr 0.1, 34 epochs with ×0.1 at
epochs 20, 28 and 32 (the paper's 20K/28K/32K iterations). About 32.5K steps; on 4 A100s
roughly a day. Quality = the `qs` output; evaluate with `python -m crfiqa_jax.evaluate`.
"""

from crfiqa_jax.configs import base


def get_config():
  c = base.get_config()
  c.model = "iresnet50"
  c.batch_size = 512
  c.lr = 0.1
  c.num_epochs = 34
  c.lr_decay_epochs = (20, 28, 32)
  c.paper_num_classes = 10572
  c.paper_num_examples = 490623
  return c
