"""`python -m crfiqa_jax.evaluate`, implemented in crfiqa_jax.evaluation.evaluate."""

import sys

from crfiqa_jax.evaluation.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
