"""Still images: expand files, folders and globs into inputs, and decode them with OpenCV.

    for item in expand_inputs(["photos/", "cat.jpg", "shots/*.png"]):
        frame = read_image(item.path)          # BGR uint8, or ImageError with a one-line reason

A folder gives its images sorted, recursively; ``source`` is the path as given, or joined with its
folder. A truncated JPEG or PNG is refused rather than classified half grey. ``read_image(path,
min_side=512)`` lets a large JPEG be decoded at 1/2, 1/4 or 1/8 of its size in the decoder's DCT
(a 4K photo in a quarter of the time), keeping its shorter side at least ``min_side``.
"""


import glob
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

from .contract import IMAGE_SUFFIXES
from .errors import EdgeError
from .imageheader import jpeg_size

_GLOB_CHARS = set("*?[")
_HEADER_BYTES = 1 << 18  # enough for the EXIF and ICC segments that come before a JPEG's frame header
_REDUCED_FLAGS = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}


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


def read_image(path: Path, min_side: Optional[int] = None) -> np.ndarray:
    """Decode ``path`` to a BGR uint8 frame (gray and RGBA become 3-channel, as cv2.IMREAD_COLOR does).

    With ``min_side``, a JPEG whose shorter side is at least twice that is decoded reduced (see
    :func:`decode_scale`); EXIF orientation is applied either way.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    if data.size == 0:
        raise ImageError("empty file")
    _refuse_truncated(data)
    frame = _decode(data, path, _jpeg_decode_scale(data, min_side) if min_side else 1)
    if frame is None:
        raise ImageError("not an image OpenCV can decode")
    return frame


def decode_scale(width: int, height: int, min_side: int) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) that leaves the shorter side at least ``min_side`` pixels.

    The resampler then shrinks what is left exactly; ``min_side`` about twice the model's resize
    side keeps the decoder's own averaging a small part of the result (see tests/test_images_reduced.py).
    """
    shorter = min(width, height)
    scale = 1
    while scale < 8 and shorter // (scale * 2) >= min_side:
        scale *= 2
    return scale


def _jpeg_decode_scale(data: np.ndarray, min_side: int) -> int:
    """:func:`decode_scale` for a JPEG whose header states its size; 1 for anything else."""
    head = data[:_HEADER_BYTES].tobytes()
    size = jpeg_size(head) if head[:3] == b"\xff\xd8\xff" else None
    return decode_scale(size[0], size[1], min_side) if size else 1


def _decode(data: np.ndarray, path: Path, scale: int) -> Optional[np.ndarray]:
    """``cv2.imdecode`` at ``scale``; through ``cv2.imread`` where imdecode ignores the reduced flags."""
    if scale == 1:
        return cv2.imdecode(data, cv2.IMREAD_COLOR)
    flag = getattr(cv2, _REDUCED_FLAGS[scale])
    if _imdecode_reduces():
        return cv2.imdecode(data, flag)
    return cv2.imread(str(path), flag)  # OpenCV 4.1.1 (JetPack 4.6): only imread honours them


@lru_cache(maxsize=None)
def _imdecode_reduces() -> bool:
    """Whether this OpenCV's imdecode honours IMREAD_REDUCED_* (4.1.1's decodes at full size); probed once."""
    ok, encoded = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    probe = cv2.imdecode(encoded, cv2.IMREAD_REDUCED_COLOR_2) if ok else None
    return probe is not None and probe.shape[:2] == (8, 8)


def _refuse_truncated(data: np.ndarray) -> None:
    """JPEG and PNG end with a marker; without it the decoder would fill the missing part with grey."""
    head = data[:8].tobytes()
    tail = data[-12:].tobytes()
    if head[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-64:].tobytes():
        raise ImageError("truncated JPEG (no end-of-image marker)")
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        raise ImageError("truncated PNG (no IEND chunk)")


