"""An image's size from its header, without decoding it (JPEG frame header, PNG IHDR).

    size = image_size(data)      # (width, height), or None when the header does not say

Used to decide how much of a large JPEG to decode (see ``edge.images.decode_scale``); standard
library only, so it costs nothing next to the decode it saves.
"""


import struct
from typing import Optional, Tuple

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (baseline, progressive, lossless...): C0-CF less DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length field


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` as a JPEG or PNG header states it (before any EXIF rotation), else None."""
    if data[:3] == b"\xff\xd8\xff":
        return jpeg_size(data)
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None


def jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """The width and height in a JPEG's first start-of-frame segment, or None if there is none."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None  # not at a marker: a damaged file, left for the decoder to report
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: image data follows, and no frame header came before it
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return (width, height) if width and height else None
        pos += 2 + length
    return None
