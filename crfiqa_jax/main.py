"""Entry point: python -m crfiqa_jax.main --config=NAME --workdir=DIR [--config.key=value ...]

NAME is a named config shipped with the package (the repository's configs/ folder, installed
as crfiqa_jax.configs: base, demo, small, large, ccs_small, ...) or a path to your own .py
file with get_config() (it may start from `from crfiqa_jax.configs import base`).
This file only parses, initialises and calls crfiqa_jax.train.job.train_and_evaluate.
Multi-host: pass --coordinator=HOST:PORT --num_processes=N --process_id=I (or, on a TPU pod,
--distributed, where jax.distributed finds its peers itself).

Example:
  python -m crfiqa_jax.main --config=demo --workdir=/tmp/crfiqa_demo --config.seed=1
"""

from __future__ import annotations

import sys

from crfiqa_jax import cli
from crfiqa_jax.train import config as config_lib, job


def main(argv: list[str] | None = None) -> int:
  """Exit code per crfiqa_jax.cli: 0 trained (and reported), 2 a usage, config or data error."""
  argv = list(sys.argv[1:] if argv is None else argv)
  p = cli.parser("crfiqa_jax.main", __doc__,
                 "python -m crfiqa_jax.main --config=demo --workdir=/tmp/crfiqa_demo "
                 "--config.seed=1")
  p.add_argument("--config", required=True,
                 help="named config (demo, small, large, ...) or a .py path")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics and reports go here")
  cli.add_process_flags(p)
  try:
    rest, overrides = config_lib.split_argv(argv)
  except config_lib.ConfigError as e:
    return cli.report(e)
  args = p.parse_args(rest)
  cli.quiet_logging()

  def body():
    config = config_lib.load_config(args.config, overrides)
    cli.init_processes(args)
    job.train_and_evaluate(config, args.workdir)

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())
