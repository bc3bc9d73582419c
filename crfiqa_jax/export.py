"""`python -m crfiqa_jax.export`, implemented in crfiqa_jax.serve.export."""

import sys

from crfiqa_jax.serve.export import main

if __name__ == "__main__":
  sys.exit(main())
