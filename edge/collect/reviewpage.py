"""The live view's ``/review`` page (``--serve`` with ``--collect DIR``): the unreviewed frames as a grid, decided
in a browser through the same functions as ``edge-collect`` (``edge.collect.folder``).

    GET  /review                   review.html (package data)
    GET  /api/review               {"frames": [{id, label, score, sampler, time, source, topk}], "labels": [...],
                                    "counts": {...}}
    GET  /api/review/frame?id=ID   the frame's JPEG
    POST /api/review/decide        {"ids": [ID, ...], "decision": "confirm"|"relabel"|"discard", "label": "..."}

URLs carry ids (a digest of the frame's place), never paths: an id is looked up among the unreviewed
frames, so no request can name a file outside ``DIR/unreviewed``. The server's token rules apply to
every request (``edge.sinks.httpd``); a POST must be ``application/json``, which a page of another site
cannot send here without a CORS preflight this server never grants.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from edge.collect.folder import LABELLED, ReviewError, counts, decide, find, manifest_entries, unreviewed

PAGE = "review.html"
MAX_FRAMES_LISTED = 500
MAX_JPEG_BYTES = 64 << 20


def listing(root: Path, labels: Sequence[str]) -> Dict[str, Any]:
    """What the grid shows: the oldest ``MAX_FRAMES_LISTED`` unreviewed frames, the model's labels, the counts."""
    entries = manifest_entries(root)
    frames = []
    for frame in unreviewed(root)[:MAX_FRAMES_LISTED]:
        entry = entries.get(frame.path.name, {})
        frames.append({"id": frame.id, "label": frame.label, "name": frame.path.name,
                       "score": entry.get("score"), "sampler": entry.get("sampler"), "time": entry.get("time"),
                       "source": entry.get("source"), "topk": entry.get("topk") or []})
    known = sorted(set(labels) | set(counts(root)[LABELLED]))
    return {"frames": frames, "labels": known, "counts": counts(root)}


_known: Dict[str, Path] = {}  # id -> file, from the last listing: a grid of images lists DIR once, not per image


def frame_jpeg(root: Path, frame_id: str) -> Optional[bytes]:
    """The JPEG of the unreviewed frame ``frame_id``, or None when there is none (any more)."""
    global _known
    path = _known.get(frame_id)
    if path is None or path.parent.parent.parent != root:
        _known = {frame.id: frame.path for frame in unreviewed(root)}  # one assignment: other threads see old or new
        path = _known.get(frame_id)
    if path is None:
        return None
    try:
        if path.is_symlink() or path.stat().st_size > MAX_JPEG_BYTES:
            return None
        return path.read_bytes()
    except OSError:  # reviewed meanwhile
        return None


def apply(root: Path, body: bytes) -> Tuple[int, Dict[str, Any]]:
    """A decision from the page: (HTTP status, JSON reply)."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return 400, {"error": "the body must be JSON"}
    if not isinstance(request, dict) or not isinstance(request.get("ids"), list) or not all(
            isinstance(i, str) for i in request["ids"]):
        return 400, {"error": "expected {\"ids\": [...], \"decision\": ..., \"label\": ...}"}
    label = request.get("label")
    if label is not None and not isinstance(label, str):
        return 400, {"error": "label must be a string"}
    try:
        done = decide(root, find(root, request["ids"]), str(request.get("decision")), label, by="web")
    except ReviewError as exc:
        return 409, {"error": str(exc)}
    except OSError as exc:
        return 500, {"error": f"cannot move the frame: {exc.strerror or exc}"}
    return 200, {"done": len(done), "counts": counts(root)}
