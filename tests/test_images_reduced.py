"""Large JPEGs decoded reduced (DCT scaling): header sizes, the scale chosen, EXIF orientation, parity."""

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from reference import seed_crop, seed_top1

import edge.sources.images
from edge.cli import main
from edge.sources.imagecheck import inspect_header
from edge.sources.images import ImageError, decode_scale, read_image
from edge.model.preprocess import resize_and_crop


def write_jpeg(path: Path, rgb: np.ndarray, orientation: int = 0, **params) -> Path:
    """``rgb`` as a JPEG file; with ``orientation``, an EXIF segment that asks viewers to rotate it."""
    flags = [cv2.IMWRITE_JPEG_QUALITY, 92] + [v for kv in params.items() for v in (getattr(cv2, kv[0]), kv[1])]
    data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), flags)[1].tobytes()
    if orientation:
        entry = struct.pack(">HHII", 0x0112, 3, 1, orientation << 16)  # Orientation, SHORT, 1 value
        tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + entry + b"\0" * 4
        app1 = b"Exif\x00\x00" + tiff
        data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    path.write_bytes(data)
    return path


def big(rgb: np.ndarray, width: int = 3840, height: int = 2160) -> np.ndarray:
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)


def test_decode_scale_keeps_the_shorter_side_at_least_min_side():
    assert decode_scale(640, 480, 512) == 1
    assert decode_scale(1280, 720, 512) == 1
    assert decode_scale(1920, 1080, 512) == 2
    assert decode_scale(3840, 2160, 512) == 4
    assert decode_scale(3024, 4032, 512) == 4  # portrait: the shorter side counts
    assert decode_scale(12000, 9000, 512) == 8  # never beyond the decoder's 1/8
    assert decode_scale(3840, 2160, 256) == 8


def test_header_sizes_the_scale_is_chosen_from(tmp_path, photos):
    """The scale comes from the header edge.sources.imagecheck reads, before decoding; EXIF and progressive too."""
    rgb = photos["rocket"]
    baseline = write_jpeg(tmp_path / "a.jpg", rgb, orientation=6).read_bytes()
    progressive = write_jpeg(tmp_path / "p.jpg", rgb, IMWRITE_JPEG_PROGRESSIVE=1).read_bytes()
    for data in (baseline, progressive):
        header = inspect_header(data)
        assert (header.format, header.width, header.height) == ("jpeg", rgb.shape[1], rgb.shape[0])


@pytest.mark.parametrize("orientation,rotated", [(0, False), (6, True)])
def test_reduced_decode_applies_exif_orientation(orientation, rotated, tmp_path, photos):
    rgb = big(photos["astronaut"][:400])  # not square, not symmetric
    path = write_jpeg(tmp_path / "x.jpg", rgb, orientation)
    full, reduced = read_image(path), read_image(path, min_side=512)
    assert full.shape[:2] == ((3840, 2160) if rotated else (2160, 3840))
    assert reduced.shape[:2] == (full.shape[0] // 4, full.shape[1] // 4)
    shrunk = cv2.resize(full, (reduced.shape[1], reduced.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - reduced.astype(int)).mean() < 2.0  # same picture, same way up


def test_imread_fallback_where_imdecode_ignores_reduced_flags(tmp_path, photos, monkeypatch):
    """OpenCV 4.1.1 (JetPack 4.6) decodes full size through imdecode; imread honours the flags there."""
    path = write_jpeg(tmp_path / "x.jpg", big(photos["coffee"]), orientation=6)
    direct = read_image(path, min_side=512)
    monkeypatch.setattr(edge.sources.images, "_imdecode_reduces", lambda: False)
    assert np.array_equal(read_image(path, min_side=512), direct)


def test_truncated_large_jpeg_is_still_refused(tmp_path, photos):
    data = write_jpeg(tmp_path / "x.jpg", big(photos["coffee"])).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "cut.jpg", min_side=512)


@pytest.mark.parametrize("size", [(1920, 1080), (3840, 2160), (3024, 4032)])
def test_reduced_decode_then_resampler_stays_within_half_a_grey_level(size, tmp_path, photos):
    for name in ("astronaut", "coffee", "hubble_deep_field"):
        path = write_jpeg(tmp_path / f"{name}.jpg", big(photos[name], *size))
        reference = seed_crop(cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB))
        ours = resize_and_crop(read_image(path, min_side=512), 256, 224)
        diff = np.abs(ours.astype(int) - reference.astype(int))
        assert diff.mean() <= 0.5 and diff.max() <= 40, (name, diff.mean(), diff.max())


def test_classify_phone_sized_jpegs_like_the_seed_pipeline(photo_onnx, photo_model, photos, tmp_path, capsys,
                                                          monkeypatch):
    """Photos at 2160 px on the shorter side (their own aspect): decoded at 1/4, named as torchvision names them."""
    import json

    model, labels = photo_model
    names = ("chelsea", "coffee", "rocket")
    expected = []
    for name in names:
        h, w = photos[name].shape[:2]
        path = write_jpeg(tmp_path / f"{name}.jpg", big(photos[name], round(w * 2160 / h), 2160))
        expected.append(labels[seed_top1(model, path)])
    decoded = []  # the rows of each frame the image source reads: decoded at 1/4, 2160 -> 540
    real_read = edge.sources.images.read_image

    def read_image(*args, **kwargs):
        frame = real_read(*args, **kwargs)
        decoded.append(frame.shape[0])
        return frame

    monkeypatch.setattr(edge.sources.images, "read_image", read_image)
    code = main(["--model", str(photo_onnx), "--image", str(tmp_path), "--json"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [r["label"] for r in records] == expected == list(names)
    assert decoded == [540, 540, 540]


def letterboxed(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with a flat grey-128 band at the bottom: what libjpeg paints where a truncated file's data ends."""
    out = np.ascontiguousarray(rgb[:480, :640]).copy()
    out[-32:] = 128
    return out


def test_a_photo_ending_in_a_flat_grey_band_is_not_refused(tmp_path, photos):
    path = write_jpeg(tmp_path / "letterboxed.jpg", letterboxed(photos["astronaut"]), IMWRITE_JPEG_QUALITY=100)
    frame = read_image(path)
    assert (frame[-8:] == 128).all()  # exactly the grey a truncated decode leaves, yet a whole file


def test_truncation_by_grey_band_where_decoder_warnings_cannot_be_caught(tmp_path, photos, monkeypatch):
    """No fd 2 (a service whose stderr is closed): the grey band is then the only sign of a cut JPEG."""
    import edge.sources.imagecheck

    data = write_jpeg(tmp_path / "x.jpg", big(photos["coffee"])).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    monkeypatch.setattr(edge.sources.imagecheck.os, "dup", lambda fd: (_ for _ in ()).throw(OSError("no fd 2")))
    with pytest.raises(ImageError, match="bottom of the picture is missing"):
        read_image(tmp_path / "cut.jpg")
    assert read_image(write_jpeg(tmp_path / "ok.jpg", photos["coffee"])).shape[2] == 3


def test_truncation_is_caught_when_an_earlier_warning_hides_libjpegs_own(tmp_path, photos):
    """libjpeg prints one warning per image: after "Invalid SOS parameters" its "premature end" never comes,
    so the grey band left where data ran out is checked whenever the decoder warned at all."""
    data = bytearray(write_jpeg(tmp_path / "x.jpg", big(photos["coffee"], 1600, 1200)).read_bytes())
    sos = data.index(b"\xff\xda")
    data[sos + 1 + struct.unpack(">H", data[sos + 2:sos + 4])[0]] = 0x01  # Ah/Al 0/1: a sequential-JPEG warning
    (tmp_path / "odd.jpg").write_bytes(bytes(data))
    (tmp_path / "odd_cut.jpg").write_bytes(bytes(data[: len(data) // 2]) + b"\xff\xd9")
    assert read_image(tmp_path / "odd.jpg").shape == (1200, 1600, 3)  # warned, but whole: still classified
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "odd_cut.jpg")
