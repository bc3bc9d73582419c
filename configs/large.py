"""CR-FIQA(L): iResNet100 on MS1MV2 (85,742 identities, 5.8M images).

  python -m crfiqa_jax.prepare insightface /data/faces_emore /data/ms1mv2
  python -m crfiqa_jax.main --config=large --workdir=runs/crfiqa_l \
      --config.data_dir=/data/ms1mv2

Expects the insightface MS1MV2 package ("faces_emore": train.rec/train.idx/property)
converted with `prepare`. The released recipe, step for step: global batch 512, SGD lr 0.1,
11,372 steps per epoch, ×0.1 after 7 and 13 epochs (steps 79,604 / 147,836: the released
MILESTONES [8, 14, 20, 25] under LambdaLR decay at the start of epoch m-1: lr_step_func in
the released CR-FIQA config.py).

Length: 16 epochs = 181,952 steps. The released CR-FIQA(L) weights are the step-181,952
checkpoint, so this config stops where the published model stops (the paper's "stop at
180K" rounds the same number). The released training config says 18 epochs (204,696
steps); its last two epochs did not produce the published weights. To train that long,
pass --config.num_epochs=18 (the schedule is unchanged: no decay falls in epochs 16-17).
For millions of identities add --config.shard_centres=true.
"""

from crfiqa_jax.configs import base


def get_config():
  c = base.get_config()
  c.model = "iresnet100"
  c.batch_size = 512
  c.lr = 0.1
  c.num_epochs = 16                # = step 181,952, the released CR-FIQA(L) checkpoint
  c.lr_decay_epochs = (7, 13)      # released MILESTONES [8, 14, 20, 25]: after m-1 epochs
  c.paper_num_classes = 85742
  c.paper_num_examples = 5822653
  return c
