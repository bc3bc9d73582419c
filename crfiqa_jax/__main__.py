"""The `crfiqa` console script (also `python -m crfiqa_jax`): one subcommand per command.

    crfiqa train --config=demo --workdir=/tmp/crfiqa_demo     # = python -m crfiqa_jax.main
    crfiqa score --checkpoint=runs/crfiqa_s --input=faces/ --output=scores.csv
    crfiqa COMMAND --help
"""

from __future__ import annotations

import importlib
import sys

from crfiqa_jax import cli

# Subcommand → the entry module (`python -m crfiqa_jax.ENTRY`) whose main(argv) runs it.
COMMANDS = {
    "train": "main",
    "prepare": "prepare",
    "score": "score",
    "evaluate": "evaluate",
    "export": "export",
    "convert": "convert",
    "calibration": "calibration",
    "analyze": "analyze",
    "ijbc": "ijbc",
    "plan": "plan",
    "report": "report",
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  return ("usage: crfiqa COMMAND [ARGS...]\n\ncommands (each the same as python -m ...):\n"
          + "\n".join(f"  {name:<{width}}  python -m crfiqa_jax.{entry}"
                       for name, entry in COMMANDS.items())
          + "\n\n`crfiqa COMMAND --help` lists its flags; `crfiqa --version` prints the version.")


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0
  if argv[0] == "--version":
    print(cli.version())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    return cli.report(f"unknown command {name!r}; commands: {', '.join(COMMANDS)} "
                      "(see crfiqa --help)")
  cli.set_prog(f"crfiqa {name}")
  return importlib.import_module(f"crfiqa_jax.{COMMANDS[name]}").main(rest)


if __name__ == "__main__":
  sys.exit(main())
