"""Still images: expand files, folders and globs into inputs, and decode them with OpenCV.

    for item in expand_inputs(["photos/", "cat.jpg", "shots/*.png"]):
        frame = read_image(item.path)          # BGR uint8, or ImageError with a one-line reason

A folder gives its images sorted, recursively; ``source`` is the path as given, or joined with its
folder. A truncated JPEG or PNG is refused rather than classified half grey; so is an image whose
header asks for more than ``max_pixels`` (checked before decoding, see ``edge.imagecheck``). A folder
that cannot be entered is reported once, as an input that failed, and the walk goes on.
``read_image(path, min_side=512)`` lets a large JPEG be decoded at 1/2, 1/4 or 1/8 of its size in the
decoder's DCT (a 4K photo in a quarter of the time), keeping its shorter side at least ``min_side``.
"""


import glob
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .contract import IMAGE_SUFFIXES
from .imagecheck import (DEFAULT_MAX_PIXELS, Header, ImageError, check_decoded, check_header, inspect_header,
                         max_file_bytes, native_warnings, read_file_bytes, truncated_by_warning)

_GLOB_CHARS = set("*?[")
_REDUCED_FLAGS = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}
HEADER_PREFIX_BYTES = 1 << 18  # a JPEG's size is in its frame header, after EXIF and its thumbnail (64 KB at most)


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
            found, unreadable = _walk_images(path)
            if not found and not unreadable:
                items.append(ImageInput(argument, None, "no images in this folder"))
            items.extend(ImageInput(os.path.join(argument, str(p.relative_to(path))), p, from_folder=True)
                         for p in found)
            items.extend(ImageInput(os.path.join(argument, str(folder.relative_to(path))), None,
                                    f"cannot read this folder: {reason}", from_folder=True)
                         for folder, reason in unreadable)
        elif path.exists() or not _GLOB_CHARS & set(argument):
            items.append(ImageInput(argument, path, None if path.exists() else "no such file"))
        else:
            matches = sorted(m for m in glob.glob(argument, recursive=True) if Path(m).is_file())
            items.extend(ImageInput(m, Path(m), from_folder=True) for m in matches)
            if not matches:
                items.append(ImageInput(argument, None, "no files match this pattern"))
    return items


def _walk_images(folder: Path) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    """Image files under ``folder``, sorted, and the subfolders that could not be listed (with why)."""
    found: List[Path] = []
    unreadable: List[Tuple[Path, str]] = []

    def report(exc: OSError) -> None:
        unreadable.append((Path(exc.filename or folder), exc.strerror or str(exc)))

    for parent, _folders, files in os.walk(str(folder), onerror=report):
        for name in files:
            candidate = Path(parent) / name
            if candidate.suffix.lower() in IMAGE_SUFFIXES and not candidate.is_dir():  # read_image refuses FIFOs
                found.append(candidate)
    return sorted(found), sorted(unreadable)


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: Optional[int] = None) -> np.ndarray:
    """Decode ``path`` to a BGR uint8 frame (gray and RGBA become 3-channel, as cv2.IMREAD_COLOR does).

    The header is checked before decoding (``edge.imagecheck``): a truncated file or one over
    ``max_pixels`` pixels is an ImageError, and so is anything OpenCV raises on a hostile file.
    With ``min_side``, a JPEG whose shorter side is at least twice that is decoded reduced (see
    :func:`decode_scale`); EXIF orientation is applied either way.
    """
    data = read_file_bytes(path, max_file_bytes(max_pixels))
    header = inspect_header(data)
    check_header(header, max_pixels)
    scale = jpeg_decode_scale(header, min_side) if min_side else 1
    try:
        with native_warnings() as warnings:
            frame = _decode(data, path, scale)
    except cv2.error as exc:  # OpenCV's own size limit, a corrupt stream the codec rejects
        raise ImageError(f"OpenCV cannot decode it ({_last_line(exc)})") from None
    if frame is None:
        raise ImageError("not an image OpenCV can decode")
    truncated_by_warning(header, warnings)
    if warnings or not warnings.collected:  # libjpeg prints one warning per image: an earlier one hides its EOF's
        check_decoded(header, frame)
    return frame


def header_pixels(path: Path, prefix_bytes: int = HEADER_PREFIX_BYTES) -> Optional[int]:
    """The pixel count an image file's header states, from its first bytes only; None if not found, not a
    regular file (opened without blocking, so a FIFO named like an image cannot hang the run) or unreadable."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return inspect_header(os.read(fd, prefix_bytes)).pixels
    except OSError:
        return None
    finally:
        os.close(fd)


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


def jpeg_decode_scale(header: Header, min_side: int) -> int:
    """:func:`decode_scale` for a JPEG whose header states its size; 1 for anything else."""
    if header.format != "jpeg" or not header.width or not header.height:
        return 1
    return decode_scale(header.width, header.height, min_side)


def _decode(data: bytes, path: Path, scale: int) -> Optional[np.ndarray]:
    """``cv2.imdecode`` at ``scale``; through ``cv2.imread`` where imdecode ignores the reduced flags."""
    buffer = np.frombuffer(data, np.uint8)
    if scale == 1:
        return cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    flag = getattr(cv2, _REDUCED_FLAGS[scale])
    if _imdecode_reduces():
        return cv2.imdecode(buffer, flag)
    return cv2.imread(str(path), flag)  # OpenCV 4.1.1 (JetPack 4.6): only imread honours them


@lru_cache(maxsize=None)
def _imdecode_reduces() -> bool:
    """Whether this OpenCV's imdecode honours IMREAD_REDUCED_* (4.1.1's decodes at full size); probed once."""
    ok, encoded = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    probe = cv2.imdecode(encoded, cv2.IMREAD_REDUCED_COLOR_2) if ok else None
    return probe is not None and probe.shape[:2] == (8, 8)


def _last_line(exc: BaseException) -> str:
    """cv2.error puts the reason on its last line, after the source file and function."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


