"""`python -m crfiqa_jax.analyze`, implemented in crfiqa_jax.evaluation.analyze."""

import sys

from crfiqa_jax.evaluation.analyze import main

if __name__ == "__main__":
  sys.exit(main())
