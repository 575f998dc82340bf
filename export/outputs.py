"""Where edge-export and edge-train write: every output checked before any model is loaded, and the
temporaries a killed run left behind cleared away.

Each file is written to a temporary beside it whose name carries the writer's process id
(``.m.tmp-<pid>-<random>.onnx``); ``kill -9`` or a power cut leaves it there, so the next write beside the
same target removes those whose process is gone::

    check_outputs([Path("build/m.onnx"), Path("build/m.jetson.labels.txt")])  # ExportError: a folder, a path
                                                                              # under a file, a read-only disk
    temporary_name(Path("m.onnx"))           # (".m.tmp-4242-", ".onnx"): mkstemp's prefix and suffix
    remove_stale_temporaries(Path("m.onnx"))  # .m.tmp-<dead pid>-*.onnx removed

Standard library only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Tuple

from edge.sinks.files import remove_stale_temporaries  # noqa: F401  (one cleaner, edge's: the same names)

from .errors import ExportError



def temporary_name(dest: Path) -> Tuple[str, str]:
    """mkstemp's ``(prefix, suffix)`` for a temporary of ``dest``: hidden, this process's id, the real suffix last
    (readers, and verification, pick the format by it)."""
    dest = Path(dest)
    return f".{dest.stem}.tmp-{os.getpid()}-", dest.suffix


def check_outputs(outputs: Iterable[Path]) -> None:
    """An ExportError naming the first output that cannot be written: an existing folder or device, a path
    under a file, a folder this process cannot create files in. Nothing is left behind by the check."""
    for out in outputs:
        out = Path(out)
        if out.is_dir():
            raise ExportError(f"--out {out} is a folder; name the file to write, such as {out / 'model.onnx'}")
        if out.exists() and not out.is_file():
            raise ExportError(f"--out {out} is not a regular file; name a file to write")
        _check_writable_folder(out)


def _check_writable_folder(out: Path) -> None:
    """The nearest existing folder above ``out`` must be a folder that takes a new file (a real try: as root,
    ``os.access`` says yes to a read-only place such as /proc)."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(f"cannot write {out}: {folder} is not a folder")
    prefix, suffix = temporary_name(out)
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=str(folder))
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(name)
