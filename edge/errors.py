"""One exception base for the device side, and how every console command turns errors into exit codes.

Every error a user can fix (a bad model, input, source, flag) is an :class:`EdgeError` whose message is
one line; the commands print it and exit 2 (or its ``exit_code``). Anything else is a bug or a broken
machine: it is named in one line with a hint, and with ``-v`` it surfaces as a full traceback::

    args, code = parse_arguments(parser, argv)      # argparse's SystemExit (--help, --version, a bad flag)
    if args is None:                                # as 0 or 2, the same in all four commands
        return code
    return run_guarded("edge-classify", lambda: run(args), verbose=args.verbose)

edge-export and edge-train use the same two functions with export's own base (``export.errors.ExportError``).
Standard library only: the host side imports it too.
"""

import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple, Type

# The exit codes of all four commands, in one table (README, "Exit codes"):
EXIT_OK = 0  # all done (a stream stopped by SIGTERM or Ctrl-C, at its end or --max-frames, included)
EXIT_FAILED = 1  # some inputs could not be classified (the rest were), a source was lost, or a bug
EXIT_USAGE = 2  # a usage error, a model that cannot be loaded, a source that cannot be opened
EXIT_INTERRUPTED = 130  # Ctrl-C during a run of images, or while the model loads
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (`| head`): what a shell reports after SIGPIPE


class EdgeError(Exception):
    """Something the user can fix; the message is one line. ``exit_code``: 2 unless a subclass says otherwise."""

    exit_code = EXIT_USAGE


def one_line(exc: BaseException, limit: Optional[int] = None, last: bool = False) -> str:
    """The first line of an exception's message (the last with ``last``: cv2.error puts the reason there,
    after the source file and function), cut at ``limit`` characters; its type's name when it has none."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if last else lines[0])[:limit]


def parse_arguments(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
                    ) -> Tuple[Optional[argparse.Namespace], int]:
    """``(args, 0)``, or ``(None, code)`` when argparse exits: 0 for --help / --version, 2 for a usage error.

    argparse has printed its message by then; returning the code (instead of letting SystemExit
    escape) keeps ``main(argv)`` callable in process with the same exit codes as the console script.
    A usage error is one line (``edge-classify: error: argument --max-pixels: must be at least 1, not 0; see
    edge-classify --help``), not argparse's whole usage block above it.
    """
    one_line_usage_errors(parser)
    try:
        return parser.parse_args(argv), EXIT_OK
    except SystemExit as exc:
        return None, exit_code_of(exc)


def one_line_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` and its subcommands' parsers report a usage error in one line (then exit 2, as argparse)."""
    for each in _parsers(parser):
        each.error = _one_line_error(each)  # type: ignore[method-assign]


def _parsers(parser: argparse.ArgumentParser) -> List[argparse.ArgumentParser]:
    """``parser`` and its subcommands' parsers (edge-service install/deploy...), which report their own errors."""
    found = [parser]
    for action in parser._actions:  # argparse keeps subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def _one_line_error(parser: argparse.ArgumentParser) -> Callable[[str], None]:
    """argparse's ``error`` without the usage block, which scrolls a bad value off a small screen."""
    def error(message: str) -> None:
        print_error("{}: error: {}; see {} --help".format(parser.prog, message, parser.prog))
        raise SystemExit(EXIT_USAGE)
    return error


def exit_code_of(exc: SystemExit) -> int:
    """argparse's exit as ours: 0 after --help or --version, 2 for a usage error."""
    return EXIT_OK if exc.code in (0, None) else EXIT_USAGE


def print_error(line: str) -> None:
    """``line`` on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def use_own_stderr() -> None:
    """Give Python's ``sys.stderr`` a file descriptor of its own (a copy of fd 2).

    A decoder's warnings are caught by pointing fd 2 somewhere else for the length of a decode
    (``edge.sources.imagecheck.native_warnings``), on whichever thread decodes; with its own
    descriptor, no line of ours (errors, logging, progress bars) can land there, and none has to wait
    for a decode. Left as it is where stderr has no real fd 2 (a test's capture, a closed stderr).
    """
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return
        sys.stderr.flush()
        own = os.dup(2)
    except (AttributeError, OSError, ValueError):
        return
    sys.stderr = os.fdopen(own, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                           errors="backslashreplace")


def run_guarded(prog: str, body: Callable[[], int], *, verbose: bool,
                expected: Tuple[Type[BaseException], ...] = (EdgeError,)) -> int:
    """Run a command's body: ``expected`` errors become one line and their exit code; Ctrl-C exits 130.

    An unexpected exception is a bug, not a user error, so it is not dressed up as one: without ``-v``
    it is one line that names its type and asks for ``-v``, and exit 1; with ``-v`` it is re-raised for
    the full traceback.
    """
    try:
        return body()
    except expected as exc:
        print_error("{}: {}".format(prog, one_line(exc)))
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    except BrokenPipeError:  # stdout's reader went away (`edge-classify ... --json | head`): end quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # before a command's own handler is in place (a model still loading)
        print_error("{}: interrupted".format(prog))
        return EXIT_INTERRUPTED
    except Exception as exc:
        if verbose:
            raise
        print_error("{}: unexpected {}: {} (run again with -v for the traceback)".format(
            prog, type(exc).__name__, one_line(exc)))
        return EXIT_FAILED


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor behind stdout (a test's capture)
        pass


def add_version(parser: argparse.ArgumentParser, version: str) -> None:
    """``--version``: the program's name and version, the same on all four commands."""
    parser.add_argument("--version", action="version", version="%(prog)s {}".format(version))
