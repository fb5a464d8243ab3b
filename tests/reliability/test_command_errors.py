"""A command raises CommandError (or lets a ValueError / OSError through); `ppflow.cli.main` prints it as one line
`ppflow CMD: error: MESSAGE`, no traceback, with exit status 2, as argparse's usage errors."""

import pytest

from ppflow.cli import main as cli
from ppflow.commands import parse_scales
from ppflow.errors import CommandError


def test_a_command_error_is_one_line_with_exit_2(capsys):
    assert cli(["flops", "--cfg", "nan"]) == 2
    assert capsys.readouterr().err == ("ppflow flops: error: --cfg 'nan': CFG scales must be finite numbers, "
                                       "e.g. 1 (no guidance) or 4\n")


def test_the_line_names_the_subcommand(capsys):
    assert cli(["schedule", "search", "--from", "unused", "--data", "digits", "--budget", "2"]) == 2
    assert capsys.readouterr().err == "ppflow schedule search: error: --budget 2.0 must be a fraction in (0, 1]\n"


def test_every_command_has_the_one_form_and_exit_2(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("max_steps: 1\n")
    assert cli(["train", "--resume", str(tmp_path), "--config", str(tmp_path / "c.yaml")]) == 2
    assert capsys.readouterr().err.startswith("ppflow train: error: --config cannot be combined with --resume")
    assert cli(["download"]) == 2
    assert capsys.readouterr().err.startswith("ppflow download: error: give a release name (")


def test_ppflow_traceback_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("PPFLOW_TRACEBACK", "1")
    with pytest.raises(CommandError, match="--cfg 'x' is not a number"):
        cli(["flops", "--cfg", "x"])


def test_parse_scales():
    assert parse_scales("4") == 4.0 and parse_scales("1,3") == [1.0, 3.0] and parse_scales(None) is None
    for bad in ("abc", "1,inf", "nan"):
        with pytest.raises(CommandError, match="--cfg"):
            parse_scales(bad)
