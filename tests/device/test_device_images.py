"""Large JPEGs decoded reduced on the device's OpenCV (4.1.1's imdecode ignores IMREAD_REDUCED_*; imread is used)."""

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.sources.images import ImageError, read_image
from edge.model.preprocess import resize_and_crop


def smooth_frame(width: int, height: int) -> np.ndarray:
    """A photo-like BGR frame: coarse random structure, enlarged (no skimage on a device)."""
    coarse = np.random.RandomState(0).randint(0, 256, (27, 48, 3)).astype(np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def jpeg_with_orientation(path: Path, bgr: np.ndarray, orientation: int) -> Path:
    data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    entry = struct.pack(">HHII", 0x0112, 3, 1, orientation << 16)  # EXIF Orientation, SHORT, 1 value
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + entry + b"\0" * 4
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    return path


@pytest.mark.parametrize("orientation", [1, 6])
def test_4k_jpeg_is_decoded_at_a_quarter_the_right_way_up(orientation, tmp_path):
    path = jpeg_with_orientation(tmp_path / "x.jpg", smooth_frame(3840, 2160), orientation)
    full, reduced = read_image(path), read_image(path, min_side=512)
    assert reduced.shape[:2] == (full.shape[0] // 4, full.shape[1] // 4)
    assert full.shape[:2] == ((3840, 2160) if orientation == 6 else (2160, 3840))
    shrunk = cv2.resize(full, (reduced.shape[1], reduced.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - reduced.astype(int)).mean() < 2.0
    crops = [resize_and_crop(image, 256, 224).astype(int) for image in (full, reduced)]
    assert np.abs(crops[0] - crops[1]).mean() < 1.0


def test_truncated_4k_jpeg_is_refused(tmp_path):
    data = cv2.imencode(".jpg", smooth_frame(3840, 2160))[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        read_image(tmp_path / "cut.jpg", min_side=512)
