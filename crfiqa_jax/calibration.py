"""`python -m crfiqa_jax.calibration`, implemented in crfiqa_jax.serve.calibration."""

import sys

from crfiqa_jax.serve.calibration import main

if __name__ == "__main__":
  sys.exit(main())
