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
import logging
import os
import sys
import threading
from typing import Callable, Optional, Sequence, Tuple, Type

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer killed by SIGPIPE (`yes | head`)


class EdgeError(Exception):
    """Something the user can fix; the message is one line. ``exit_code``: 2 unless a subclass says otherwise."""

    exit_code = EXIT_USAGE


def one_line(exc: BaseException, limit: Optional[int] = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut at ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def parse_arguments(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
                    ) -> Tuple[Optional[argparse.Namespace], int]:
    """``(args, 0)``, or ``(None, code)`` when argparse exits: 0 for --help / --version, 2 for a usage error.

    argparse has printed its message by then; returning the code (instead of letting SystemExit
    escape) keeps ``main(argv)`` callable in process with the same exit codes as the console script.
    """
    try:
        return parser.parse_args(argv), EXIT_OK
    except SystemExit as exc:
        return None, exit_code_of(exc)


def exit_code_of(exc: SystemExit) -> int:
    """argparse's exit as ours: 0 after --help or --version, 2 for a usage error."""
    return EXIT_OK if exc.code in (0, None) else EXIT_USAGE


STDERR_LOCK = threading.RLock()  # held while a decoder has fd 2 redirected (edge.imagecheck.native_warnings)


def print_error(line: str) -> None:
    """``line`` on stderr, once no decoder on another thread has fd 2 redirected for its warnings.

    It waits as long as that decode takes (bounded by ``--max-pixels``): written before, the line
    would land in the decoder's warnings instead of reaching the user."""
    with STDERR_LOCK:
        print(line, file=sys.stderr, flush=True)


class LockedStderrHandler(logging.StreamHandler):
    """A log handler whose writes wait for ``STDERR_LOCK``, so no line lands in a decoder's redirected fd 2."""

    def createLock(self) -> None:  # noqa: N802 (logging's name)
        self.lock = STDERR_LOCK


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
