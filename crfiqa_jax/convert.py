"""`python -m crfiqa_jax.convert`, implemented in crfiqa_jax.serve.convert."""

import sys

from crfiqa_jax.serve.convert import main

if __name__ == "__main__":
  sys.exit(main())
