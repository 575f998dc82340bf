"""The files one edge-train run writes beside ``--out``, written so that no crash, kill or stray path costs a user file.

    files = RunFiles.beside(Path("runs/photos.pt"))   # .best, .last, .metrics, .curves, .grid
    files.refuse_foreign()                            # UsageError if one exists and edge-train did not write it
    files.remove_stale_temporaries()                  # what a kill -9 left behind
    with atomic_path(files.metrics) as tmp:           # ".photos.metrics.tmp-<pid>-xyz.json", renamed when done
        tmp.write_text(...)

A temporary's name carries its writer's process id (the convention of ``edge.sinks.files``), so the next run
removes the ones whose writer is gone and leaves those of a run still writing. An existing file is
replaced only when it is recognisably ours: an edge-train checkpoint (by its ``format`` key), a metrics
JSON with ``METRICS_FORMAT``, or a PNG whose ``Software`` text chunk starts with ``edge-train``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from edge.sinks.files import remove_stale_temporaries

from ..exporter import atomic_path  # noqa: F401  (one atomic writer for exports and training runs)

from ..errors import UsageError

METRICS_FORMAT = "edge-train-metrics"
PNG_SOFTWARE = "edge-train"  # the PNG "Software" text chunk of the curves and the grid
LEGACY_METRICS_KEYS = {"arch", "classes", "input_side", "resize_side", "best_epoch", "best_val_acc", "settings",
                       "epochs"}


@dataclass(frozen=True)
class RunFiles:
    """The files a run writes beside ``--out``."""

    best: Path
    last: Path
    metrics: Path
    curves: Path
    grid: Path

    @classmethod
    def beside(cls, out: Path) -> "RunFiles":
        stem = out.name[: -len(out.suffix)] if out.suffix else out.name
        return cls(out, out.with_name(f"{stem}.last{out.suffix}"), out.with_name(f"{stem}.metrics.json"),
                   out.with_name(f"{stem}.curves.png"), out.with_name(f"{stem}.val.png"))

    def all(self) -> Tuple[Path, ...]:
        return (self.best, self.last, self.metrics, self.curves, self.grid)

    def refuse_foreign(self) -> None:
        """UsageError naming the first existing file that edge-train did not write: it is never replaced.

        The PNGs of runs from before the ``Software`` mark pass when a checkpoint of the same run is beside them.
        """
        run_here = any(_is_checkpoint(path) for path in (self.best, self.last) if path.is_file())
        for path in self.all():
            legacy = run_here and path.suffix == ".png" and _png_software(path) is not None
            if (path.exists() or path.is_symlink()) and not (written_by_edge_train(path) or legacy):
                raise UsageError(f"{path} exists and was not written by edge-train; it is never replaced: choose "
                                 "another --out or move the file away")

    def remove_stale_temporaries(self) -> None:
        for path in self.all():
            remove_stale_temporaries(path)


def default_out_for_resume(resume: Path) -> Path:
    """``runs/x.last.pt`` -> ``runs/x.pt``: the run goes on beside the file given on the command line."""
    suffix = resume.suffix
    stem = resume.name[: -len(suffix)] if suffix else resume.name
    if not stem.endswith(".last"):
        raise UsageError(f"--resume {resume}: name the run's output with --out (without it, --resume takes "
                         "the X.last.pt file of a run and goes on writing X.pt)")
    return resume.with_name(stem[: -len(".last")] + suffix)


def written_by_edge_train(path: Path) -> bool:
    """Whether ``path`` is a file an edge-train run wrote (and so one a run may replace)."""
    if path.is_symlink() or not path.is_file():
        return False
    kind = path.suffix.lower()
    try:
        if kind == ".png":
            return (_png_software(path) or "").startswith(PNG_SOFTWARE)
        if kind == ".json":
            document = json.loads(path.read_text(encoding="utf-8"))
            # Or one from before the format key: no user's JSON has all of these.
            return document.get("format") == METRICS_FORMAT or LEGACY_METRICS_KEYS <= set(document)
        return _is_checkpoint(path)
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, a JSON list...
        return False


def _png_software(path: Path) -> Optional[str]:
    """A PNG's ``Software`` text ("" when it has none); None when ``path`` is no PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return str(image.text.get("Software", "")) if image.format == "PNG" else None
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _is_checkpoint(path: Path) -> bool:
    """An edge-train checkpoint, by its ``format`` key (memory-mapped: an 89 MB file costs no 89 MB read)."""
    import torch

    from .checkpoint import CHECKPOINT_FORMAT

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for a file that is not a safe zip checkpoint
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT
