"""`python -m crfiqa_jax.prepare`, implemented in crfiqa_jax.data.prepare."""

import sys

from crfiqa_jax.data.prepare import main

if __name__ == "__main__":
  sys.exit(main())
