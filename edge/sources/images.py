"""Still images as a source: expand files, folders and globs into inputs, decode them with OpenCV.

    for item in expand_inputs(["photos/", "cat.jpg", "shots/*.png"]):
        frame = read_image(item.path)          # BGR uint8, or ImageError with a one-line reason

    source = ImageSource(items, max_pixels=100_000_000, read_ahead=1, prepare=classifier.prepare)
    source.start(); frame = source.next(timeout=0.1)      # as a camera's Grabber: the loop takes frames

A folder gives its images sorted, recursively, without following links to folders (a link back up
would never end); ``source`` is the path as given, or joined with its folder. A glob's ``**`` does
follow them, as Python's glob does, but enters each real folder once (two links back into the
folder made Python's own glob run forever), and a pattern may match at most ``MAX_GLOB_MATCHES``
files. A truncated JPEG or PNG is refused rather than classified half grey; so is an image whose
header asks for more than ``max_pixels`` (checked before decoding, see ``edge.sources.imagecheck``). A folder
that cannot be entered is reported once, as an input that failed, and the walk goes on.
``read_image(path, min_side=512)`` lets a large JPEG be decoded at 1/2, 1/4 or 1/8 of its size in the
decoder's DCT (a 4K photo in a quarter of the time), keeping its shorter side at least ``min_side``.
"""


import fnmatch
import glob
import itertools
import os
import stat
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple

import cv2
import numpy as np

from edge.contract import IMAGE_SUFFIXES
from edge.errors import EdgeError, one_line
from edge.sources.frames import Frame, FrameBuffer
from edge.sources.imagecheck import (DEFAULT_MAX_PIXELS, Header, ImageError, check_decoded, check_header, inspect_header,
                         max_file_bytes, native_warnings, read_file_bytes, truncated_by_warning)

_GLOB_CHARS = set("*?[")
_REDUCED_FLAGS = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}
MESSAGE_LIMIT = 200  # characters of OpenCV's own message kept in ours
HEADER_PREFIX_BYTES = 1 << 18  # a JPEG's size is in its frame header, after EXIF and its thumbnail (64 KB at most)
# Each match is held as an ImageInput (~0.5 KB with its path) before the first image is read: 100,000
# is ~50 MB, affordable on a 4 GB Nano; a bigger set is a folder, or several narrower patterns.
MAX_GLOB_MATCHES = 100_000


@dataclass(frozen=True)
class ImageInput:
    source: str  # as the user will read it in the output
    path: Optional[Path]  # None when the argument matched nothing
    error: Optional[str] = None
    from_folder: bool = False
    relative: str = ""  # where its labelled copy goes under --output: the path inside the folder given


def expand_inputs(arguments: Sequence[str], exclude: Optional[Path] = None) -> List[ImageInput]:
    """Every image named by ``arguments`` (files, folders, globs), in order; unmatched ones carry an error.

    ``exclude``: a folder whose images are left out (``--output`` inside a folder being classified:
    a second run must not classify the first one's labelled copies)."""
    items = _expand(arguments)
    if exclude is None or not Path(exclude).is_dir():
        return items
    skip = os.path.realpath(str(exclude)) + os.sep
    return [i for i in items if i.path is None or not os.path.realpath(str(i.path)).startswith(skip)]


def _expand(arguments: Sequence[str]) -> List[ImageInput]:
    items: List[ImageInput] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found, unreadable = _walk_images(path)
            if not found and not unreadable:
                items.append(ImageInput(argument, None, "no images in this folder"))
            items.extend(ImageInput(os.path.join(argument, str(p.relative_to(path))), p, from_folder=True,
                                    relative=str(p.relative_to(path)))
                         for p in found)
            items.extend(ImageInput(os.path.join(argument, str(folder.relative_to(path))), None,
                                    f"cannot read this folder: {reason}", from_folder=True)
                         for folder, reason in unreadable)
        elif path.exists() or not _GLOB_CHARS & set(argument):
            items.append(ImageInput(argument, path, None if path.exists() else "no such file", relative=path.name))
        else:
            items.extend(_glob_inputs(argument))
    return items


def _glob_inputs(pattern: str) -> List[ImageInput]:
    """The files ``pattern`` matches, sorted; or one input that failed (none, or more than MAX_GLOB_MATCHES)."""
    files = (m for m in _glob_files(pattern) if Path(m).is_file())
    matches = sorted(itertools.islice(files, MAX_GLOB_MATCHES + 1))
    if len(matches) > MAX_GLOB_MATCHES:
        return [ImageInput(pattern, None, f"this pattern matches more than {MAX_GLOB_MATCHES} files; "
                                          "name their folder, or split the pattern")]
    if not matches:
        return [ImageInput(pattern, None, "no files match this pattern")]
    base = _glob_base(pattern)
    return [ImageInput(m, Path(m), from_folder=True, relative=os.path.relpath(m, base)) for m in matches]


def _glob_base(pattern: str) -> str:
    """The folder a glob's matches are relative to: its leading components without a wildcard."""
    parts = Path(pattern).parts
    fixed = parts[:next((i for i, p in enumerate(parts) if _GLOB_CHARS & set(p)), len(parts))]
    return str(Path(*fixed)) if fixed else "."


def _glob_files(pattern: str) -> Iterator[str]:
    """What ``glob.glob(pattern, recursive=True)`` gives, lazily, with ``**`` entering each real folder once."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.iglob(pattern)  # depth bounded by the pattern
    literal = list(itertools.takewhile(lambda part: not _GLOB_CHARS & set(part), parts))
    return _walk_matching(os.sep.join(literal), parts[len(literal):])


def _walk_matching(root: str, pattern: List[str]) -> Iterator[str]:
    """Files under ``root`` whose path below it matches the ``pattern`` components (glob's rules for ``**``
    and hidden names); links to folders are followed, but a folder already entered (same device and
    inode: a link loop, two links to one place) is not entered again, and a folder's real subfolders
    are entered before its links, so a folder is listed under its own path where it can be."""
    top = root or os.curdir
    try:
        info = os.stat(top)
    except OSError:
        return
    visited: Set[Tuple[int, int]] = {(info.st_dev, info.st_ino)}
    hidden_wanted = any(part.startswith(".") for part in pattern)
    for parent, folders, files in os.walk(top, followlinks=True):
        real_first = sorted(folders, key=lambda name: (os.path.islink(os.path.join(parent, name)), name))
        folders[:] = [name for name in real_first
                      if (hidden_wanted or not name.startswith(".")) and _first_visit(parent, name, visited)]
        below = os.path.relpath(parent, top)
        prefix = [] if below == os.curdir else below.split(os.sep)
        for name in files:
            if _matches(prefix + [name], pattern):
                yield os.path.join(root, *prefix, name)


def _first_visit(parent: str, name: str, visited: Set[Tuple[int, int]]) -> bool:
    try:
        info = os.stat(os.path.join(parent, name))
    except OSError:  # a dangling link: nothing to enter
        return False
    key = (info.st_dev, info.st_ino)
    if key in visited:
        return False
    visited.add(key)
    return True


def _matches(names: List[str], pattern: List[str]) -> bool:
    """Whether the path components ``names`` match the ``pattern`` components, as glob matches them:
    ``**`` stands for any number of components, and no wildcard matches a name starting with a dot."""
    if not pattern:
        return not names
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        for taken in range(len(names) + 1):
            if taken and names[taken - 1].startswith("."):
                return False
            if _matches(names[taken:], rest):
                return True
        return False
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatch(names[0], head) and _matches(names[1:], rest)


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

    The header is checked before decoding (``edge.sources.imagecheck``): a truncated file or one over
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
        raise ImageError(f"OpenCV cannot decode it ({one_line(exc, MESSAGE_LIMIT, last=True)})") from None
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


class ImageSource:
    """A list of images as a source of frames, read in order on a thread of its own.

    The loop takes frames as from a camera's ``Grabber`` (``next``, ``finished``, ``close``). Each
    frame carries its input's name, and an ``error`` instead of a picture when the image could not be
    read, so the loop reports it and goes on. ``read_ahead`` images wait decoded (and, with
    ``prepare``, preprocessed) beside the one the model has (0: each read only when the loop asks).
    ``keep_image``: keep the decoded picture after ``prepare`` (to draw on it); without it a waiting
    image holds only its model input (150 KB, where a 100 MP picture is 300 MB) and a large JPEG may be
    decoded reduced to ``min_side``.
    """

    live = False  # every frame is used, in order
    items_are_inputs = True  # a frame that fails is that input's failure; the run goes on
    name = "images"
    dropped = reconnects = 0
    error: Optional[str] = None
    stuck = False

    def __init__(self, items: Sequence[ImageInput], *, max_pixels: int = DEFAULT_MAX_PIXELS, read_ahead: int = 0,
                 prepare: Optional[Callable[[np.ndarray], np.ndarray]] = None, keep_image: bool = True,
                 min_side: Optional[int] = None) -> None:
        self.items = list(items)
        self._max_pixels = max_pixels
        self._prepare = prepare
        self._keep_image = keep_image or prepare is None
        self._min_side = None if keep_image else min_side
        self._buffer = FrameBuffer(latest_only=False, read_ahead=read_ahead)
        self._stop = threading.Event()
        self._failure: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="edge-images", daemon=True)

    def open_first(self) -> None:
        """Nothing to open: each image is opened when it is read."""

    def start(self) -> None:
        self._thread.start()

    def next(self, timeout: float) -> Optional[Frame]:
        """The next image's frame in order, or None after ``timeout`` (or at the end)."""
        frame = self._buffer.get(timeout)
        if frame is None and self._failure is not None and self._buffer.closed:
            failure, self._failure = self._failure, None
            raise failure  # the reader itself failed (a bug, out of memory): the loop must not wait forever
        return frame

    @property
    def finished(self) -> bool:
        return self._buffer.closed

    def alive(self, within: float) -> bool:
        """Always: a decode is bounded by ``max_pixels``, so the reader cannot hang."""
        return True

    def close(self) -> None:
        """Stop reading and wait for the image in hand: a thread still inside OpenCV when the interpreter
        exits would abort the process (exit 134 instead of 141 after ``| head`` or 130 after Ctrl-C)."""
        self._stop.set()
        self._buffer.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            for number, item in enumerate(self.items):
                self._buffer.wait_for_room(self._stop)
                if self._stop.is_set():
                    return
                self._buffer.put(self._read(number, item), self._stop)
        except BaseException as exc:  # handed to the loop, which raises it where it stands
            self._failure = exc
        finally:
            self._buffer.close()

    def _read(self, number: int, item: ImageInput) -> Frame:
        started = time.perf_counter()
        if item.error:
            return Frame(None, number, time.monotonic(), 0.0, name=item.source, error=item.error)
        try:
            image = read_image(item.path, self._max_pixels, min_side=self._min_side)
            decoded = time.perf_counter()
            batch = self._prepare(image) if self._prepare is not None else None
        except (EdgeError, OSError, ValueError, cv2.error, MemoryError) as exc:  # a bad image: its own line
            return Frame(None, number, time.monotonic(), 0.0, name=item.source, error=one_line(exc, last=True))
        ms = {"decode": (decoded - started) * 1e3}
        if batch is not None:
            ms["preprocess"] = (time.perf_counter() - decoded) * 1e3
        return Frame(image if self._keep_image else None, number, time.monotonic(), ms["decode"],
                     name=item.source, batch=batch, ms=ms)
