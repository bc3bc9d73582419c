"""docs/cli.md is generated from the parsers and kept current; every argument of every
command has a help line; `evaluate --help` says what its sources accept; --version
everywhere."""

import importlib

import pytest

import crfiqa_jax.__main__ as console
from crfiqa_jax import cli, cli_reference
from helpers import ROOT


def test_docs_cli_md_is_current():
  page = (ROOT / "docs" / "cli.md").read_text()
  assert cli_reference.updated(page, cli_reference.generate()) == page, (
      f"docs/cli.md is out of date: run {cli_reference.REGENERATE}")


def test_every_argument_has_a_help_line():
  assert cli_reference.missing_help() == []


def test_the_page_lists_every_command_and_flag():
  parsers = cli_reference.parsers()
  assert list(parsers) == list(console.COMMANDS)
  page = (ROOT / "docs" / "cli.md").read_text()
  for name, p in parsers.items():
    assert f"\n## {name}\n" in page
    for a in cli_reference.actions(p):
      assert (a.option_strings or [a.dest])[0] in page, (name, a.option_strings)
  assert "\n### prepare celeba\n" in page


def test_evaluate_help_says_what_its_sources_accept():
  text = cli_reference.parsers()["evaluate"].format_help()
  for form in ("NAME=PATH", "random", "oracle", "dlib", "scores CSV", ".npz", "keyed by image",
               "KEY.npy", "cr-fiqa-s", "CC BY-NC 4.0", "--discard"):
    assert form in text, form


def test_updated_replaces_only_the_generated_part():
  b, e = cli_reference.BEGIN, cli_reference.END
  assert cli_reference.updated(f"intro\n{b}\nold\n{e}\noutro\n", f"{b}\nnew\n{e}") == \
      f"intro\n{b}\nnew\n{e}\noutro\n"
  assert cli_reference.updated("intro\n", f"{b}\nx\n{e}") == f"intro\n\n{b}\nx\n{e}\n"


@pytest.mark.parametrize("command", list(console.COMMANDS))
def test_version_on_every_command(command, capsys, monkeypatch):
  monkeypatch.setattr(cli, "_prog_override", None)
  main = importlib.import_module(f"crfiqa_jax.{console.COMMANDS[command]}").main
  with pytest.raises(SystemExit) as e:
    main(["--version"])
  assert e.value.code == 0 and capsys.readouterr().out.strip() == cli.version()


def test_version_of_the_console_script_and_a_subcommand(capsys):
  assert console.main(["--version"]) == 0
  assert capsys.readouterr().out.strip() == cli.version()
  with pytest.raises(SystemExit) as e:
    console.main(["prepare", "celeba", "--version"])
  assert e.value.code == 0 and capsys.readouterr().out.strip() == cli.version()
