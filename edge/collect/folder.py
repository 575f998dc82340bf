"""The collection folder (``edge-classify --collect DIR``) and the decisions a reviewer takes on its frames.

One layout, read and written by the collecting sink (``edge.collect.sampler``), the ``edge-collect``
command and the live view's ``/review`` page, which all call these functions::

    DIR/unreviewed/<predicted label>/<time>-<source>.jpg   frames kept by the samplers, full size
    DIR/labelled/<label>/<same name>.jpg                   confirmed or relabelled: an ImageFolder for edge-train
    DIR/manifest.jsonl                                     one line per kept frame (time, source, model, top-k, why)
    DIR/decisions.jsonl                                    one line per decision (confirm, relabel, discard)

    frames = unreviewed(Path("DIR"))                      # [Frame(id, path, label), ...] oldest first
    decide(Path("DIR"), [frames[0].path], "relabel", "cat")  # moved to DIR/labelled/cat/, logged
    counts(Path("DIR"))                                    # {"unreviewed": {...}, "labelled": {...}}

Nothing outside ``DIR/unreviewed`` is ever moved or deleted: a path given by a user (or an id from a
browser) is resolved, symlinks and ``..`` included, and refused (:class:`ReviewError`) unless it is a
regular file there. Labels become folder names only through :func:`safe_name`. Standard library only.
"""

import hashlib
import json
import logging
import os
import time
import unicodedata
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

from edge.errors import EdgeError

log = logging.getLogger("edge-collect")

UNREVIEWED = "unreviewed"
LABELLED = "labelled"
MANIFEST = "manifest.jsonl"
DECISIONS = "decisions.jsonl"
DECISION_KINDS = ("confirm", "relabel", "discard")
NAME_LIMIT = 80
IMAGE_SUFFIX = ".jpg"


class ReviewError(EdgeError):
    """A path outside the collection, a file that is not there, a label that cannot be a folder: one line, exit 2."""


class Frame(NamedTuple):
    """One unreviewed frame: ``id`` (stable, no path in it: what URLs carry), its file, the model's label."""

    id: str
    path: Path
    label: str


def safe_name(text: str, fallback: str = "_") -> str:
    """``text`` as one file or folder name: letters, digits, space, ``-_.+`` kept; anything else (path
    separators, control characters, ``:``) becomes ``_``; no leading dot (``..``, hidden files); bounded."""
    kept = "".join(c if (c.isalnum() or c in " -_.+") and unicodedata.category(c)[0] != "C" else "_"
                   for c in str(text))
    kept = kept.strip(" .")[:NAME_LIMIT].strip(" .")
    return kept or fallback


def frame_id(relative: str) -> str:
    """A frame's id: a short digest of its place under ``unreviewed/`` (ids, never paths, in URLs)."""
    return hashlib.sha256(relative.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def unreviewed(root: Path) -> List[Frame]:
    """The unreviewed frames, oldest first (their names start with the time they were kept)."""
    base = root / UNREVIEWED
    frames = []
    if not base.is_dir():
        return frames
    for folder in sorted(base.iterdir()):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.suffix == IMAGE_SUFFIX and not path.is_symlink() and path.is_file():
                frames.append(Frame(frame_id(f"{folder.name}/{path.name}"), path, folder.name))
    frames.sort(key=lambda f: (f.path.name, f.label))
    return frames


def find(root: Path, ids: Iterable[str]) -> List[Path]:
    """The files of these ids (ReviewError names the first one that is not an unreviewed frame)."""
    by_id = {frame.id: frame.path for frame in unreviewed(root)}
    paths = []
    for given in ids:
        if given not in by_id:
            raise ReviewError(f"no unreviewed frame has the id {str(given)[:40]!r} (reviewed already?)")
        paths.append(by_id[given])
    return paths


def inside_unreviewed(root: Path, given: Path) -> Path:
    """``given`` (relative to ``root`` or the working folder) as a regular file directly in
    ``root/unreviewed/<label>/``; ReviewError for anything else (``..``, a symlink, another folder)."""
    candidates = [given] if given.is_absolute() else [root / given, Path.cwd() / given]
    path = next((c for c in candidates if os.path.lexists(str(c))), None)
    if path is None:
        raise ReviewError(f"{given}: no such file")
    base = (root / UNREVIEWED).resolve()
    if path.is_symlink() or path.parent.is_symlink():
        raise ReviewError(f"{given}: a symbolic link; only frames in {root / UNREVIEWED} are reviewed")
    resolved = path.resolve()
    if resolved.parent.parent != base or not resolved.is_file():
        raise ReviewError(f"{given}: not a frame in {root / UNREVIEWED}/<label>/; refused")
    return resolved


def decide(root: Path, files: Sequence[Path], decision: str, label: Optional[str] = None,
           by: str = "cli") -> List[Path]:
    """Apply one decision to each file (all checked first: one refused file moves none). Returns where they went.

    ``confirm``: to ``labelled/<its predicted label>/``; ``relabel``: to ``labelled/<label>/``;
    ``discard``: deleted. Each is logged in ``decisions.jsonl``; a name taken in ``labelled/`` gets a suffix.
    """
    if decision not in DECISION_KINDS:
        raise ReviewError(f"unknown decision {decision!r}: one of {', '.join(DECISION_KINDS)}")
    target_label = None
    if decision == "relabel":
        if not label or not label.strip():
            raise ReviewError("relabel needs a label (--to LABEL)")
        target_label = safe_name(label.strip())
    paths = [inside_unreviewed(root, Path(f)) for f in files]
    done = []
    for path in paths:
        predicted = path.parent.name
        if decision == "discard":
            path.unlink()
            done.append(path)
            _log_decision(root, path.name, decision, predicted, None, by)
            continue
        chosen = target_label or predicted
        target = _free_name(root / LABELLED / chosen, path.name)
        os.replace(str(path), str(target))  # same file system: atomic, never over a file (_free_name)
        done.append(target)
        _log_decision(root, path.name, decision, predicted, chosen, by)
    return done


def _free_name(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target, stem, count = folder / name, Path(name).stem, 1
    while os.path.lexists(str(target)):
        target = folder / f"{stem}-{count}{IMAGE_SUFFIX}"
        count += 1
    return target


def _log_decision(root: Path, name: str, decision: str, predicted: str, label: Optional[str], by: str) -> None:
    entry = {"time": round(time.time(), 3), "file": name, "decision": decision, "predicted": predicted,
             "label": label, "by": by}
    append_line(root / DECISIONS, entry)


def append_line(path: Path, entry: Dict) -> None:
    """One JSON line appended in a single write (a reader never sees half a line from us)."""
    data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
    with open(str(path), "ab") as handle:
        handle.write(data)


def counts(root: Path) -> Dict[str, Dict[str, int]]:
    """Frames per class, unreviewed and labelled."""
    result: Dict[str, Dict[str, int]] = {UNREVIEWED: {}, LABELLED: {}}
    for frame in unreviewed(root):
        result[UNREVIEWED][frame.label] = result[UNREVIEWED].get(frame.label, 0) + 1
    base = root / LABELLED
    if base.is_dir():
        for folder in sorted(base.iterdir()):
            if folder.is_dir() and not folder.is_symlink():
                result[LABELLED][folder.name] = sum(1 for p in folder.iterdir() if p.is_file())
    return result


def manifest_entries(root: Path) -> Dict[str, Dict]:
    """The manifest's entries by file name (a damaged line is skipped)."""
    entries: Dict[str, Dict] = {}
    path = root / MANIFEST
    if not path.is_file():
        return entries
    with open(str(path), "r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                entries[Path(entry["file"]).name] = entry
    return entries
