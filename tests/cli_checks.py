"""The check all four commands' user errors share: one line on stderr, ``PROG: ...``, no traceback.

Written once here for the host-side tests (tests/device/conftest.py keeps its own: it runs on Python 3.6);
test_commands.py holds the one table of usage errors (exit 2) across edge-classify, edge-service,
edge-export and edge-train::

    from cli_checks import error_line, one_line, usage_error

    line = usage_error(main(argv), capsys.readouterr().err, "edge-classify", "--topk")  # exit 2, one line
    assert "no such file" in error_line(capsys, "edge-service")                          # any exit code
"""

from typing import Optional

USAGE = 2  # the exit code of a usage error, the same in all four commands (edge/errors.py)


def one_line(err: str, prog: Optional[str], *needles: str) -> str:
    """The line ``err`` holds, once checked: one line, starting ``prog: ``, no traceback, every needle in it."""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err, err
    line = err[:-1]
    if prog is not None:
        assert line.startswith(f"{prog}: "), err
    for needle in needles:
        assert needle in line, (needle, err)
    return line


def error_line(capsys, prog: Optional[str], *needles: str) -> str:
    """``one_line`` of what has reached stderr through pytest's ``capsys`` since it was last read."""
    return one_line(capsys.readouterr().err, prog, *needles)


def usage_error(code: int, err: str, prog: Optional[str], *needles: str) -> str:
    """``one_line``, and exit 2: a usage error."""
    assert code == USAGE, (code, err)
    return one_line(err, prog, *needles)
