"""CCS-FIQA(S): the paper's ablation; as CR-FIQA(S) but the regression target is CCS.

  python -m crfiqa_jax.main --config=ccs_small --workdir=runs/ccs_s \
      --config.data_dir=/data/casia
"""

from crfiqa_jax.configs import small


def get_config():
  c = small.get_config()
  c.target = "ccs"
  return c
