"""The entry points: `python -m crfiqa_jax.main` is thin and keeps the CLI contract, and the
`crfiqa` console script has one subcommand per command."""

import pytest

import crfiqa_jax.__main__ as console
from crfiqa_jax import cli, main


def test_console_lists_and_dispatches_every_command(capsys, monkeypatch):
  assert console.main([]) == 0
  listing = capsys.readouterr().out
  for name, entry in console.COMMANDS.items():
    assert f"  {name}" in listing and f"python -m crfiqa_jax.{entry}" in listing
  assert set(console.COMMANDS) >= {"train", "prepare", "score", "evaluate", "export", "plan",
                                   "analyze", "convert", "calibration", "ijbc"}
  monkeypatch.setattr(cli, "_prog_override", None)
  with pytest.raises(SystemExit) as e:
    console.main(["score", "--help"])
  assert e.value.code == 0
  assert capsys.readouterr().out.startswith("usage: crfiqa score")
  assert console.main(["nonsense"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "unknown command 'nonsense'" in err[0]


def test_main_reports_config_errors_in_one_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(cli, "_prog_override", None)
  assert main.main(["--config=demo", f"--workdir={tmp_path}", "--config.nope=1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: Unknown config key 'nope'")
  assert main.main(["--config=demo", f"--workdir={tmp_path}", "--config.seed"]) == 2
  assert "--config.key=value" in capsys.readouterr().err
