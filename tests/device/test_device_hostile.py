"""Hostile input on the device's own stack (Python 3.6, numpy 1.19, OpenCV 4.1.1 under CI's JetPack 4.6 tier).

The header checks, the truncation checks and the special-file refusals must hold with the decoders a
Jetson really has: each case is the installed ``edge-classify`` on a file built here with the
standard library, one line on stderr, the right exit code, and the good photo beside it classified.
"""

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from .conftest import one_line, run


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4097 * 4))
            + png_chunk(b"IEND", b""))


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    data = bytearray(jpeg)
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def hostile(case: str, jpeg: bytes, folder: Path) -> Path:
    path = folder / "bad.jpg"
    if case == "png bomb":
        path = folder / "bad.png"
        path.write_bytes(png_claiming(32000, 32000))
    elif case == "jpeg bomb":
        path.write_bytes(jpeg_claiming(jpeg, 25000, 25000))
    elif case == "truncated":
        path.write_bytes(jpeg[: len(jpeg) // 2])
    elif case == "truncated + EOI":
        path.write_bytes(jpeg[: len(jpeg) // 2] + b"\xff\xd9")
    elif case == "fifo":
        os.mkfifo(str(path))
    elif case == "many scans":
        path.write_bytes(many_scans(jpeg, 160))
    return path


def many_scans(jpeg: bytes, scans: int) -> bytes:
    """``jpeg`` re-encoded progressive by this OpenCV (libjpeg's 10 scans), its last scan repeated up to ``scans``."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - 10) + data[end:]


CASES = [("png bomb", "1024 megapixels, over the limit"), ("jpeg bomb", "625 megapixels, over the limit"),
         ("truncated", "truncated JPEG"), ("truncated + EOI", "truncated JPEG"), ("fifo", "not a regular file"),
         ("many scans", "a progressive JPEG of more than 100 scans")]


@pytest.mark.parametrize("case,message", CASES, ids=[c for c, _ in CASES])
def test_a_hostile_image_is_one_line_and_the_good_one_is_classified(case, message, bundle, tmp_path):
    photo = bundle.photos / "chelsea.jpg"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(str(photo), str(folder / "good.jpg"))
    bad = hostile(case, photo.read_bytes(), folder)
    done = run("edge-classify", "--model", bundle.models["fp32_uint8"], "--image", folder, "--json", timeout=60)
    assert done.code == 1
    line = one_line(done.err)
    assert bad.name in line and message in line, line
    assert [Path(r["source"]).name for r in done.json_lines()] == ["good.jpg"]


def test_a_whole_jpeg_with_trailing_bytes_is_classified(bundle, tmp_path):
    path = tmp_path / "motion.jpg"
    path.write_bytes((bundle.photos / "chelsea.jpg").read_bytes() + b"ftypmp42" * 500)
    done = run("edge-classify", "--model", bundle.models["fp32_uint8"], "--image", path, "--json")
    assert done.code == 0, done.err
    assert done.json_lines()[0]["label"] == "chelsea"


def test_output_over_the_input_and_a_special_labels_file_are_refused(bundle, tmp_path):
    photo = tmp_path / "cat.jpg"
    shutil.copy(str(bundle.photos / "chelsea.jpg"), str(photo))
    before = photo.read_bytes()
    done = run("edge-classify", "--model", bundle.models["fp32_uint8"], "--image", photo, "--output", photo)
    assert done.code == 2 and "is one of the inputs" in one_line(done.err)
    assert photo.read_bytes() == before
    done = run("edge-classify", "--model", bundle.models["fp32_uint8"], "--image", photo, "--labels", "/dev/zero",
               timeout=60)
    assert done.code == 2 and "not a regular file" in one_line(done.err)


def test_a_glob_through_links_back_ends_and_a_name_that_is_not_utf8_is_classified(bundle, tmp_path):
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    shutil.copy(str(bundle.photos / "chelsea.jpg"), os.fsdecode(bytes(folder / "a") + b"/caf\xe9.jpg"))
    os.symlink("..", str(folder / "a" / "up"))
    os.symlink(".", str(folder / "here"))
    done = run("edge-classify", "--model", bundle.models["fp32_uint8"], "--image", str(folder / "**" / "*.jpg"),
               "--json", timeout=60)
    assert done.code == 0, done.err
    [record] = done.json_lines()
    assert os.fsencode(record["source"]).endswith(b"a/caf\xe9.jpg") and record["label"] == "chelsea"


def test_an_onnx_model_with_a_custom_operator_domain_is_refused(bundle, tmp_path):
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    opset = field(8, field(1, b"") + b"\x10\x0d") + field(8, field(1, b"com.example.custom") + b"\x10\x01")
    model = tmp_path / "custom.onnx"
    model.write_bytes(b"\x08\x07" + opset)  # ir_version 7 and two opset imports: enough to be refused
    done = run("edge-classify", "--model", model, "--image", bundle.photos / "chelsea.jpg")
    assert done.code == 2 and "custom domain 'com.example.custom'" in one_line(done.err)
