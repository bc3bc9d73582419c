"""`python -m crfiqa_jax.plan`, implemented in crfiqa_jax.train.plan."""

import sys

from crfiqa_jax.train.plan import main

if __name__ == "__main__":
  sys.exit(main())
