"""One exception base for the host side: every error edge-export and edge-train can explain in one line.

    raise WeightsError("weights file not found: x.pth")     # an ExportError: one line, exit 2
    raise TrainingError("the loss diverged")                # exit_code 1: the run failed, the input was fine

The console commands (``export.cli``) print these as one line and exit with their ``exit_code``; any
other exception is a bug and surfaces (a one-line summary, the full traceback with ``-v``), through
the same ``edge.errors.run_guarded`` the device's commands use.
"""

from __future__ import annotations

from edge.errors import EXIT_FAILED, EXIT_USAGE


class ExportError(Exception):
    """Something the user can fix on the host side; the message is one line."""

    exit_code = EXIT_USAGE


class WeightsError(ExportError, ValueError):
    """Weights, a checkpoint or labels that cannot be used."""


class UnknownArchError(ExportError, ValueError):
    """An architecture name the registry does not hold."""


class DataError(ExportError, ValueError):
    """An image folder edge-train cannot learn from."""


class UsageError(ExportError, ValueError):
    """Flags that do not go together."""


class TrainingError(ExportError, RuntimeError):
    """Training itself went wrong (a diverging loss, nothing readable)."""

    exit_code = EXIT_FAILED


class VerificationError(ExportError):
    """Verification photos that cannot be read, or an artifact the device path cannot run."""
