"""Several sources in one run: ``--camera`` and ``--source`` (each repeatable) and ``--sources FILE``.

    entries = read_sources_file(Path("cameras.txt"))
    # door=rtsp://user:pass@10.0.0.5/stream1
    # yard=csi://0  roi=0,200,1280,520
    # /videos/test.mp4
    names = unique_names(entries)          # ['door', 'yard', 'test']

A line of the file is ``[NAME=]URI [roi=X,Y,W,H]``: blank lines and ``#`` comments are skipped. NAME (letters,
digits, ``_.-``, at most 64) names the source in ``--json`` records, outputs and logs; without one, the
source is named as it is shown alone (``csi://0``, the video's path, the stream with its password masked)
and its files by :func:`short_name` (``csi0``, ``test``, the stream's host). ``--source NAME=URI`` names a
source on the command line the same way, unless a file of that whole name exists. ROI is the part of the
frame the model sees (``x,y`` its top-left corner, ``w,h`` its size, in the frame's pixels).
"""

import os
import re
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from edge.errors import EdgeError

MAX_SOURCES = 64
MAX_FILE_BYTES = 64 << 10
_NAMED = re.compile(r"^([A-Za-z0-9_.-]{1,64})=(\S.*)$")
_ROI = re.compile(r"^(.*\S)\s+roi=(\S*)$")

Roi = Tuple[int, int, int, int]


class SourceListError(EdgeError, ValueError):
    """A sources file or a source flag that cannot be used; the message is one line."""


class SourceEntry(NamedTuple):
    """One source as given: what ``parse_source`` opens, its name if it was given one, its region of interest."""

    uri: str
    name: Optional[str] = None
    roi: Optional[Roi] = None
    camera: Optional[int] = None  # --camera N: a V4L2 index


def parse_roi(text: str) -> Roi:
    """``X,Y,W,H`` (whole pixels; W and H at least 1) as a tuple; ValueError with the reason otherwise."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"roi {text!r} is not X,Y,W,H (four whole numbers of pixels)")
    x, y, w, h = (int(p) for p in parts)
    if w < 1 or h < 1 or max(x, y, w, h) > 100_000:
        raise ValueError(f"roi {text!r}: width and height must be at least 1 pixel, and all values below 100000")
    return x, y, w, h


def named(text: str) -> Tuple[Optional[str], str]:
    """``NAME=URI`` as (NAME, URI); anything else (a pipeline's ``key=value``, a file of that name) as (None, text)."""
    match = _NAMED.match(text.strip())
    if match is None or os.path.exists(text):
        return None, text.strip()
    return match.group(1), match.group(2).strip()


def read_sources_file(path: Path) -> List[SourceEntry]:
    """The sources of ``--sources FILE`` (SourceListError naming the line of anything that cannot be used)."""
    try:
        if not path.is_file():
            raise SourceListError(f"--sources {path}: " + ("not a file" if path.exists() else "no such file"))
        with open(str(path), "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SourceListError(f"--sources {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SourceListError(f"--sources {path}: larger than {MAX_FILE_BYTES // 1024} KiB; one source per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceListError(f"--sources {path}: not UTF-8 text") from None
    entries = [_entry(line.strip(), f"--sources {path}:{number}") for number, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise SourceListError(f"--sources {path}: no source in it (one per line: [NAME=]URI [roi=X,Y,W,H])")
    return entries


def _entry(line: str, where: str) -> SourceEntry:
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line):
        raise SourceListError(f"{where}: a control character in the line")
    roi = None
    match = _ROI.match(line)
    if match is not None:
        line = match.group(1)
        try:
            roi = parse_roi(match.group(2))
        except ValueError as exc:
            raise SourceListError(f"{where}: {exc}") from None
    name, uri = named(line)
    return SourceEntry(uri, name, roi)


def source_entries(cameras: Sequence[int], sources: Sequence[str], listed: Sequence[SourceEntry],
                   roi: Optional[Roi] = None) -> List[SourceEntry]:
    """Every source of a run, in the order given: cameras, then ``--source`` flags, then the file's lines.
    ``--roi`` applies to the sources of the command line; the file's lines carry their own."""
    given = [SourceEntry(str(n), None, roi, n) for n in cameras]
    given += [SourceEntry(uri, name, roi) for name, uri in map(named, sources)]
    entries = given + list(listed)
    if len(entries) > MAX_SOURCES:
        raise SourceListError(f"{len(entries)} sources: at most {MAX_SOURCES} in one process")
    return entries


def short_name(source: str) -> str:
    """A name for files and topics: ``csi://0`` -> ``csi0``, ``/videos/door.avi`` -> ``door``, a stream -> its host."""
    text = source.strip()
    if "!" in text:  # a GStreamer pipeline
        return "pipeline"
    if "://" in text:
        parts = urlsplit(text)
        text = (parts.hostname or "") + parts.path if parts.scheme not in ("csi", "file") else parts.scheme + \
            parts.netloc + parts.path
    else:
        text = Path(text).stem if not text.isdigit() else "camera" + text
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.")
    return cleaned or "source"


def unique(names: Sequence[str]) -> List[str]:
    """``names`` with repeats made distinct (``door``, ``door-2``), so no two sources share an output file."""
    seen: set = set()
    result = []
    for name in names:
        candidate, count = name, 1
        while candidate in seen:
            count += 1
            candidate = f"{name}-{count}"
        seen.add(candidate)
        result.append(candidate)
    return result
