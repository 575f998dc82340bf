"""Checks on an image file before and after it is decoded: size from the header, completeness, special files.

A decoder allocates what the header asks for, so a 35 KB JPEG that claims 25000x25000 pixels costs
gigabytes before a single pixel is read. These checks read the header only (PNG IHDR, JPEG SOF, BMP,
WebP, TIFF, PNM), so a file is refused in microseconds and a few kilobytes of memory::

    data = read_file_bytes(path, max_bytes)        # ImageError for a FIFO, a device, a file too big
    header = inspect_header(data)                   # format, width, height, complete
    check_header(header, max_pixels=100_000_000)    # ImageError: too many pixels, truncated
    frame = cv2.imdecode(...)
    check_decoded(header, frame)                    # ImageError: a JPEG whose end is missing

For a format whose header is not parsed here, OpenCV's own limit (``CV_IO_MAX_IMAGE_PIXELS``, read
once per process) is set to the same number by :func:`limit_opencv_decoder`.
"""


import contextlib
import logging
import os
import re
import stat
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from edge.errors import EdgeError

log = logging.getLogger(__name__)
# A 4 GB Jetson Nano decodes 100 MP (300 MB as BGR, ~1 GB at the decoder's peak) and still runs a model.
DEFAULT_MAX_PIXELS = 100_000_000
BYTES_PER_PIXEL_LIMIT = 8  # a file bigger than 8 bytes per allowed pixel (16-bit RGBA, raw) is not an image we take
MIN_FILE_LIMIT = 64 << 20

JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
JPEG_PROGRESSIVE_SOF = frozenset((0xC2, 0xC6, 0xCA, 0xCE))  # Huffman / arithmetic, plain / differential
# A progressive decode passes over the whole picture once per scan, so its cost is scans x pixels: a
# 1.65 MB file of 16,000 scans took 95 s. libjpeg's own progressive script writes 10 scans (6 for grey),
# mozjpeg's optimised ones about as many; 100 leaves 10x headroom and bounds a decode to ~10x a normal
# one. (libjpeg-turbo's "scan limit" in its tools and fuzzers is the same idea; a sequential JPEG has at
# most one scan per component, so only progressive files are counted.)
MAX_JPEG_SCANS = 100
JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI: no length field
_ENTROPY_END = re.compile(b"\xff[^\x00\xd0-\xd7\xff]")  # the first marker after a scan's coded data
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GREY = 128  # what libjpeg paints where coded data is missing


class ImageError(EdgeError, ValueError):
    """An input that is not a readable image; the message is one line."""


@dataclass(frozen=True)
class Header:
    """What a file's header says: its format, its size when known, and whether the file reaches its end marker."""

    format: str  # "jpeg", "png", "bmp", "webp", "tiff", "pnm" or "unknown"
    width: Optional[int] = None
    height: Optional[int] = None
    complete: bool = True
    scans: Optional[int] = None  # a progressive JPEG's scans (counted up to MAX_JPEG_SCANS + 1); None: not counted

    @property
    def pixels(self) -> Optional[int]:
        return self.width * self.height if self.width is not None and self.height is not None else None


def max_file_bytes(max_pixels: int) -> int:
    """The largest file worth reading for an image of at most ``max_pixels`` pixels."""
    return max(MIN_FILE_LIMIT, BYTES_PER_PIXEL_LIMIT * max_pixels)


def read_file_bytes(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file; a FIFO, a device or a folder would block or never end, so they are refused."""
    try:
        info = os.stat(str(path))
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError("is a folder")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file (a FIFO, socket or device is never read)")
    if info.st_size == 0:
        raise ImageError("empty file")
    if info.st_size > max_bytes:
        raise ImageError(f"file too big for an image ({info.st_size / 1e6:.0f} MB; the limit is "
                         f"{max_bytes / 1e6:.0f} MB, raise --max-pixels for more)")
    try:
        with open(str(path), "rb") as handle:
            return handle.read(info.st_size)  # not read(max_bytes): CPython allocates that much up front
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None


def inspect_header(data: bytes) -> Header:
    """The format, size and completeness of an encoded image, from its header and markers alone."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == PNG_SIGNATURE:
        return _png(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if re.match(b"P[1-6]\\s", data[:3]):
        return _pnm(data)
    return Header("unknown")


def check_header(header: Header, max_pixels: int) -> None:
    """Refuse, before decoding, an image that is truncated, larger than ``max_pixels`` or of too many scans."""
    if header.scans is not None and header.scans > MAX_JPEG_SCANS:
        raise ImageError(f"a progressive JPEG of more than {MAX_JPEG_SCANS} scans (a normal one has about 10; "
                         "each scan costs a pass over the whole picture)")
    if not header.complete:
        what = {"jpeg": "JPEG (no end-of-image marker)", "png": "PNG (its chunks end before IEND)"}
        raise ImageError(f"truncated {what.get(header.format, header.format)}")
    pixels = header.pixels
    if pixels is not None and (header.width <= 0 or header.height <= 0):
        raise ImageError(f"the {header.format} header says {header.width}x{header.height} pixels")
    if pixels is not None and pixels > max_pixels:
        raise ImageError(f"{header.width}x{header.height} is {pixels / 1e6:.0f} megapixels, over the limit of "
                         f"{max_pixels / 1e6:g} (--max-pixels N to allow more)")


def check_decoded(header: Header, frame: np.ndarray) -> None:
    """A JPEG cut short but ended with a marker decodes with flat grey where data is missing: refuse it.

    Called only where the decoder warned about something, or its warnings could not be collected (no
    fd 2): a clean picture may end in exactly that grey (a letterbox, a synthetic image), while libjpeg
    warns whenever it paints it, though only its first warning per image is printed, so an earlier one
    (bad SOS parameters, corrupt data) can stand in for "premature end"."""
    if header.format == "jpeg" and frame.shape[0] >= 8 and bool((frame[-8:] == GREY).all()):
        raise ImageError("truncated JPEG (the bottom of the picture is missing)")


class DecoderMessages(list):
    """The lines a native decoder wrote to fd 2; ``collected`` is False where they could not be caught."""

    collected = True


@contextlib.contextmanager
def native_warnings() -> Iterator["DecoderMessages"]:
    """Collect what libjpeg and libpng (or a camera driver) write straight to file descriptor 2.

    Their warnings ("Corrupt JPEG data: premature end of data segment") bypass Python and would be a
    second, raw line beside ours; collected, they tell a truncated JPEG apart and are logged at debug
    level. File descriptor 2 is the process's, so only the code that decodes pays for this: our own
    lines never go through fd 2 (``edge.errors.use_own_stderr`` gives Python's ``sys.stderr`` a
    descriptor of its own at start-up), and only another redirection waits for this one. What native
    code on another thread writes to fd 2 meanwhile (onnxruntime, CUDA) lands here, logged at debug
    level with the decoder's lines.
    """
    messages = DecoderMessages()
    with _REDIRECT_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no fd 2 (a service with stderr closed): nothing to collect
            saved = None
            messages.collected = False
        if saved is not None:
            sink = _warning_sink()
            sink.seek(0)
            sink.truncate()
            os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                messages.extend(line for line in sink.read(8192).decode("utf-8", "replace").splitlines() if line)
    for message in messages:
        log.debug("decoder: %s", message)


_REDIRECT_LOCK = threading.Lock()  # one redirection of fd 2 at a time (image reader, camera opener)
_SINK: List = []  # one temporary file per process, reused: a new one per image would cost more than the check


def _warning_sink():
    if not _SINK:
        _SINK.append(tempfile.TemporaryFile())
    return _SINK[0]


def truncated_by_warning(header: Header, messages: List[str]) -> None:
    """libjpeg warns when coded data stops before the picture is complete, even if an EOI was appended."""
    if header.format == "jpeg" and any("premature end" in m for m in messages):
        raise ImageError("truncated JPEG (its coded data ends before the picture does)")


def limit_opencv_decoder(max_pixels: int) -> None:
    """OpenCV's own pixel limit (read once, at its first decode) for the formats not parsed here."""
    os.environ["CV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)


# --------------------------------------------------------------------------------------------- formats

def _jpeg(data: bytes) -> Header:
    """The size from the frame header (SOF); complete when an end-of-image marker closes the coded data.

    Most files end with EOI (0xFFD9) and, if sequential, are settled without scanning; a file with
    bytes after its picture (a phone's motion photo carries a video there) is walked marker by marker
    to its EOI, and so is a progressive one, whose scans are counted on the way.
    """
    to_end = data[-64:].rstrip(b"\x00")[-2:] != b"\xff\xd9"
    walk = _walk_jpeg(data, to_end)
    return Header("jpeg", walk.width, walk.height, complete=walk.ended if to_end else walk.scanned, scans=walk.scans)


@dataclass
class _JpegWalk:
    width: Optional[int] = None
    height: Optional[int] = None
    ended: bool = False  # reached EOI
    scanned: bool = False  # reached the coded data of a first scan
    scans: Optional[int] = None  # counted for a progressive file only


def _walk_jpeg(data: bytes, to_end: bool) -> _JpegWalk:
    """Walk the markers from SOI to the first scan, or to EOI with ``to_end`` or in a progressive file.

    A progressive file's scans are counted, the walk stopping (not ended) past MAX_JPEG_SCANS.
    """
    walk = _JpegWalk()
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return walk  # lost sync: damaged or cut
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            walk.ended = True
            return walk
        if marker in JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > end:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in JPEG_SOF and pos + 9 <= end:
            walk.height, walk.width = struct.unpack(">HH", data[pos + 5:pos + 9])
            walk.scans = 0 if marker in JPEG_PROGRESSIVE_SOF else None
        pos += 2 + length
        if marker == 0xDA:  # start of scan: coded data runs to the next real marker
            walk.scanned = walk.scanned or pos < end
            if walk.scans is not None:
                walk.scans += 1
                if walk.scans > MAX_JPEG_SCANS:
                    return walk
            elif not to_end:
                return walk
            found = _ENTROPY_END.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return walk


def _png(data: bytes) -> Header:
    """Walk the chunks from the signature to IEND; IHDR is first and gives the size."""
    width = height = None
    pos, end = 8, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR" and pos + 16 <= end:
            width, height = struct.unpack(">II", data[pos + 8:pos + 16])
        if kind == b"IEND":
            return Header("png", width, height, complete=True)
        pos += 12 + length  # length, type, data, CRC
    return Header("png", width, height, complete=False)


def _bmp(data: bytes) -> Header:
    if len(data) < 26:
        return Header("bmp", complete=False)
    if struct.unpack("<I", data[14:18])[0] == 12:  # the old OS/2 header: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return Header("bmp", width, abs(height))


def _webp(data: bytes) -> Header:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return Header("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25:
        bits = struct.unpack("<I", data[21:25])[0]
        return Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return Header("webp", width, height)
    return Header("webp")


def _tiff(data: bytes) -> Header:
    """ImageWidth (256) and ImageLength (257) from the first directory."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count = struct.unpack(order + "H", data[offset:offset + 2])[0]
        size = {}
        for entry in range(count):
            at = offset + 2 + 12 * entry
            tag, kind = struct.unpack(order + "HH", data[at:at + 4])
            if tag in (256, 257):
                fmt = order + ("H" if kind == 3 else "I")
                size[tag] = struct.unpack(fmt, data[at + 8:at + 8 + struct.calcsize(fmt)])[0]
    except struct.error:  # a directory beyond the end of the file
        return Header("tiff")
    return Header("tiff", size.get(256), size.get(257))


def _pnm(data: bytes) -> Header:
    head = re.sub(b"#[^\n]*", b"", data[:1024])
    fields = head.split()
    try:
        return Header("pnm", int(fields[1]), int(fields[2]))
    except (IndexError, ValueError):
        return Header("pnm")
