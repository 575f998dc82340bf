"""Still images: expand files, folders and globs into inputs, and decode them with OpenCV.

    for item in expand_inputs(["photos/", "cat.jpg", "shots/*.png"]):
        frame = read_image(item.path)          # BGR uint8, or ImageError with a one-line reason

A folder gives its images sorted, recursively; ``source`` is the path as given, or joined with its
folder. A truncated JPEG or PNG is refused rather than classified half grey.
"""


import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

from .contract import IMAGE_SUFFIXES
from .errors import EdgeError
_GLOB_CHARS = set("*?[")


class ImageError(EdgeError, ValueError):
    """An input that is not a readable image; the message is one line."""


@dataclass(frozen=True)
class ImageInput:
    source: str  # as the user will read it in the output
    path: Optional[Path]  # None when the argument matched nothing
    error: Optional[str] = None
    from_folder: bool = False


def expand_inputs(arguments: Sequence[str]) -> List[ImageInput]:
    """Every image named by ``arguments`` (files, folders, globs), in order; unmatched ones carry an error."""
    items: List[ImageInput] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                items.append(ImageInput(argument, None, "no images in this folder"))
            items.extend(ImageInput(os.path.join(argument, str(p.relative_to(path))), p, from_folder=True)
                         for p in found)
        elif path.exists() or not _GLOB_CHARS & set(argument):
            items.append(ImageInput(argument, path, None if path.exists() else "no such file"))
        else:
            matches = sorted(m for m in glob.glob(argument, recursive=True) if Path(m).is_file())
            items.extend(ImageInput(m, Path(m), from_folder=True) for m in matches)
            if not matches:
                items.append(ImageInput(argument, None, "no files match this pattern"))
    return items


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` to a BGR uint8 frame (gray and RGBA become 3-channel, as cv2.IMREAD_COLOR does)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    if data.size == 0:
        raise ImageError("empty file")
    _refuse_truncated(data)
    frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if frame is None:
        raise ImageError("not an image OpenCV can decode")
    return frame


def _refuse_truncated(data: np.ndarray) -> None:
    """JPEG and PNG end with a marker; without it the decoder would fill the missing part with grey."""
    head = data[:8].tobytes()
    tail = data[-12:].tobytes()
    if head[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-64:].tobytes():
        raise ImageError("truncated JPEG (no end-of-image marker)")
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        raise ImageError("truncated PNG (no IEND chunk)")


