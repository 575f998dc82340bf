"""The console scripts ``edge-export``, ``edge-train`` and ``edge-quickstart``: a front door any Python can import.

A device install (JetPack 4.6: Python 3.6, often NVIDIA's own torch) gets these two scripts too, since one
distribution installs both packages; ``export.cli`` needs Python 3.9+ and would die there with a
``SyntaxError``. So the scripts point here, at code written for Python 3.6 (checked on a real 3.6 by
tests/test_python_versions.py), which says in one line what the commands need, exit 2, or hands over::

    edge-export = export.console:export_main     (setup.cfg, [options.entry_points])
    edge-train = export.console:train_main
"""

import sys
from typing import Optional, Sequence

HOST_PYTHON = (3, 9)
HOST_HINT = ("{} builds models on a host and needs the host install: Python 3.9+ with torch "
             "(pip install '.[export]' in the edge-classifier checkout); {}")
EXIT_USAGE = 2  # edge.errors.EXIT_USAGE, not imported: nothing but the standard library is certain here


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``edge-export``: ``export.cli.export_main`` where the host install is there, else one line, exit 2."""
    return _hand_over("edge-export", "export_main", argv)


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``edge-train``: ``export.cli.train_main`` where the host install is there, else one line, exit 2."""
    return _hand_over("edge-train", "train_main", argv)


def quickstart_main(argv: Optional[Sequence[str]] = None) -> int:
    """``edge-quickstart``: ``export.quickstart.main`` where the host install is there, else one line, exit 2."""
    return _hand_over("edge-quickstart", "main", argv, module="quickstart")


def missing_host_install() -> Optional[str]:
    """What this Python lacks for the host commands (too old, no torch), or None."""
    if sys.version_info < HOST_PYTHON:
        return "this is Python {}.{}".format(*sys.version_info[:2])
    try:
        import torch  # noqa: F401  (only whether it imports)
    except ImportError as exc:
        return "torch is not installed here ({})".format(exc)
    return None


def _hand_over(prog: str, name: str, argv: Optional[Sequence[str]], module: str = "cli") -> int:
    missing = missing_host_install()
    if missing:
        print("{}: {}".format(prog, HOST_HINT.format(prog, missing)), file=sys.stderr)
        return EXIT_USAGE
    import importlib

    host = importlib.import_module("export." + module)  # only now: its syntax needs Python 3.9+
    return getattr(host, name)(argv)
