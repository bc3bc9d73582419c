"""CR-FIQA(S): iResNet50 on CASIA-WebFace (10,572 identities, ~0.49M images).

  python -m crfiqa_jax.prepare insightface /data/faces_webface_112x112 /data/casia
  python -m crfiqa_jax.main --config=small --workdir=runs/crfiqa_s \
      --config.data_dir=/data/casia

Expects the insightface CASIA-WebFace package (train.rec/train.idx/property) converted
with `prepare`. The released recipe, step for step: global batch 512, SGD lr 0.1, 34 epochs
of 958 steps = 32,572 steps (the released CR-FIQA(S) checkpoint is step 32,572), ×0.1 after
19, 27 and 31 epochs (steps 18,202 / 25,866 / 29,698). The released code's MILESTONES are
[20, 28, 32], but its lr_step_func under LambdaLR, stepped once per epoch from epoch 0,
applies decay m at the start of epoch m-1 (the released config.py); the paper's "20K/28K/32K" rounds.
On 4 A100s roughly a day. Quality = the `qs` output; evaluate with
`python -m crfiqa_jax.evaluate`.
"""

from crfiqa_jax.configs import base


def get_config():
  c = base.get_config()
  c.model = "iresnet50"
  c.batch_size = 512
  c.lr = 0.1
  c.num_epochs = 34
  c.lr_decay_epochs = (19, 27, 31)  # released MILESTONES [20, 28, 32]: decay after m-1 epochs
  c.paper_num_classes = 10572
  c.paper_num_examples = 490623
  return c
