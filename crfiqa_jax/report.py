"""`python -m crfiqa_jax.report`, implemented in crfiqa_jax.serve.report."""

import sys

from crfiqa_jax.serve.report import main

if __name__ == "__main__":
  sys.exit(main())
