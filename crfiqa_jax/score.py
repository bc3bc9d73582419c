"""`python -m crfiqa_jax.score`, implemented in crfiqa_jax.serve.score."""

import sys

from crfiqa_jax.serve.score import main

if __name__ == "__main__":
  sys.exit(main())
