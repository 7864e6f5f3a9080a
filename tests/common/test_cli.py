"""The shared error style of every command line (common/cli.py)."""

import errno

import pytest

from common.cli import CliParser, positive_int, run_cli
from common.errors import ConfigError, OutputError


def _raiser(error: BaseException):
    def main(argv):
        raise error

    return main


@pytest.mark.parametrize("error, status, line", [
    (ConfigError("--data x does not exist"), 2, "prog: error: --data x does not exist"),
    (OutputError("cannot write y"), 3, "prog: output error: cannot write y"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/a.bin"), 3,
     "prog: output error: no space left on the device writing /out/a.bin: free some space"),
    (ConfigError("first line\nsecond line"), 2, "prog: error: first line; second line"),
])
def test_errors_become_one_line_and_a_status(capsys, error, status, line):
    assert run_cli(_raiser(error), [], prog="prog") == status
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.splitlines()) == 1 and "Traceback" not in err


def test_debug_flag_or_variable_shows_the_traceback(capsys, monkeypatch):
    assert run_cli(_raiser(ConfigError("bad")), ["--debug"], prog="prog") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "prog: error: bad"
    monkeypatch.setenv("MBEIR_DEBUG", "1")
    assert run_cli(_raiser(OutputError("full")), [], prog="prog") == 3
    assert "Traceback" in capsys.readouterr().err


def test_unexpected_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        run_cli(_raiser(ZeroDivisionError("bug")), [], prog="prog")
    with pytest.raises(PermissionError):  # an OSError other than a full disk is not swallowed
        run_cli(_raiser(PermissionError(errno.EACCES, "denied")), [], prog="prog")


def test_status_from_main_and_interrupt(capsys):
    assert run_cli(lambda argv: 5, [], prog="p") == 5
    assert run_cli(lambda argv: {"a": 1}, [], prog="p") == 0
    assert run_cli(_raiser(KeyboardInterrupt()), [], prog="p") == 130
    assert capsys.readouterr().err == "p: interrupted\n"


def test_parser_errors_are_one_line_with_a_suggestion(capsys):
    def main(argv):
        p = CliParser(prog="tool")
        p.add_argument("--micro_batch", type=positive_int, required=True)
        p.add_argument("--global_batch", type=positive_int)
        p.parse_args(argv)

    cases = [
        (["--micro_bach", "4"], "tool: error: unknown flag --micro_bach (did you mean --micro_batch?) "
                                "(see tool --help)"),
        (["--batch", "4"], "unknown flag --batch (did you mean --global_batch or --micro_batch?)"),
        (["--micro_batch", "0"], "argument --micro_batch: 0 is below the minimum 1"),
        (["--micro_batch", "x"], "argument --micro_batch: 'x' is not an integer"),
        (["--micro"], "unknown flag --micro"),  # no abbreviations
        ([], "the following arguments are required: --micro_batch"),
    ]
    for argv, message in cases:
        assert run_cli(main, argv, prog="tool") == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "--debug" in capsys.readouterr().out
