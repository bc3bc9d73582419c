"""`python -m crfiqa_jax.ijbc`, implemented in crfiqa_jax.evaluation.ijbc."""

import sys

from crfiqa_jax.evaluation.ijbc import main

if __name__ == "__main__":
  sys.exit(main())
