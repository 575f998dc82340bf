"""edge-classify --image against hostile and broken input: one line on stderr, the right exit code, no lost work.

Each case is a row: what the user passes, the exit code, what the one stderr line says. Bombs are
files whose header claims a huge image: the check must refuse them from the header alone.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from cli_checks import one_line
from torch import nn

from edge.cli import main
from export.exporter import export_artifact
from export.metadata import artifact_metadata

LABELS = ["cat", "cup", "rocket"]
SIDE, RESIZE = 32, 37


class Tiny(nn.Module):
    """A 3-class convnet small enough to export and run in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_artifact(Tiny().eval(), tmp_path_factory.mktemp("tiny") / "tiny.onnx", arch="tiny", labels=LABELS,
                           input_side=SIDE, resize_side=RESIZE)


def with_metadata(model: Path, out: Path, **changes: str) -> Path:
    """A copy of ``model`` with some metadata values replaced."""
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(proto, str(out))
    return out


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG (every chunk, IEND) whose header claims ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_claiming(photo: np.ndarray, width: int, height: int) -> bytes:
    """A real JPEG of ``photo`` with its frame header (SOF0) rewritten to claim ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".jpg", photo)[1].tobytes())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return np.ascontiguousarray(photos["chelsea"][::2, ::2, ::-1])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------- bad images

def write_case(tmp_path: Path, photo: np.ndarray, case: str) -> Path:
    """The hostile file of ``case``, beside a good photo ``good.jpg`` in ``tmp_path``."""
    encoded = cv2.imencode(".jpg", photo)[1].tobytes()
    png = cv2.imencode(".png", photo)[1].tobytes()
    path = tmp_path / "bad.png"
    if case == "png bomb 32000":
        path.write_bytes(png_claiming(32000, 32000))
    elif case == "png header 50000":
        path.write_bytes(png_claiming(50000, 50000))
    elif case == "jpeg bomb 25000":
        path = tmp_path / "bad.jpg"
        path.write_bytes(jpeg_claiming(photo, 25000, 25000))
    elif case == "jpeg 12000":
        path = tmp_path / "bad.jpg"
        path.write_bytes(jpeg_claiming(photo, 12000, 12000))
    elif case == "truncated jpeg":
        path = tmp_path / "bad.jpg"
        path.write_bytes(encoded[: len(encoded) // 2])
    elif case == "truncated jpeg + EOI":
        path = tmp_path / "bad.jpg"
        path.write_bytes(encoded[: len(encoded) // 2] + b"\xff\xd9")
    elif case == "truncated png":
        path.write_bytes(png[: len(png) // 2])
    elif case == "truncated png + IEND":
        path.write_bytes(png[: len(png) // 2] + png_chunk(b"IEND", b""))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(os.urandom(4096))
    elif case == "fifo":
        path = tmp_path / "bad.jpg"
        os.mkfifo(str(path))
    elif case == "progressive jpeg of 160 scans":
        path = tmp_path / "bad.jpg"
        path.write_bytes(many_scans(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(), 160))
    return path


def many_scans(progressive: bytes, scans: int) -> bytes:
    """A progressive JPEG (libjpeg's 10 scans) with its last scan repeated up to ``scans``: libjpeg warns
    of an inconsistent progression, then decodes every one of them, a pass over the picture each."""
    last, end = progressive.rindex(b"\xff\xda"), progressive.rindex(b"\xff\xd9")
    return progressive[:end] + progressive[last:end] * (scans - 10) + progressive[end:]


BAD_IMAGES = [
    ("png bomb 32000", "1024 megapixels, over the limit"),
    ("png header 50000", "2500 megapixels, over the limit"),
    ("jpeg bomb 25000", "625 megapixels, over the limit"),
    ("jpeg 12000", "144 megapixels, over the limit"),
    ("truncated jpeg", "truncated JPEG"),
    ("truncated jpeg + EOI", "truncated JPEG"),
    ("truncated png", "truncated PNG"),
    ("truncated png + IEND", "truncated PNG"),
    ("empty", "empty file"),
    ("garbage", "not an image"),
    ("fifo", "not a regular file"),
    ("progressive jpeg of 160 scans", "a progressive JPEG of more than 100 scans"),
]


@pytest.mark.parametrize("case,message", BAD_IMAGES, ids=[c for c, _ in BAD_IMAGES])
def test_a_bad_image_is_one_line_and_the_rest_of_the_folder_goes_on(case, message, model, photo, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    bad = write_case(folder, photo, case)
    cv2.imwrite(str(folder / "good.jpg"), photo)
    cv2.imwrite(str(folder / "z_good.png"), photo)
    timer = threading.Timer(20, lambda: os.open(str(bad), os.O_WRONLY | os.O_NONBLOCK) if case == "fifo" else None)
    timer.start()  # if the FIFO were opened for reading, this would unblock it: the test then fails, not hangs
    try:
        code, out, err = run(capsys, "--model", model, "--image", folder, "--json")
    finally:
        timer.cancel()
    assert code == 1
    one_line(err, "edge-classify", bad.name, message)
    classified = [json.loads(line)["source"] for line in out.splitlines()]
    assert classified == [str(folder / "good.jpg"), str(folder / "z_good.png")]


@pytest.mark.parametrize("extra", [b"", b"motion photo: an mp4 follows" * 100])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_whole_image_with_trailing_bytes_is_classified(suffix, extra, model, photo, tmp_path, capsys):
    path = tmp_path / f"phone{suffix}"
    path.write_bytes(cv2.imencode(suffix, photo)[1].tobytes() + extra)
    code, out, err = run(capsys, "--model", model, "--image", path)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{path}: ")


def test_a_normal_progressive_jpeg_is_classified(model, photo, tmp_path, capsys):
    path = tmp_path / "progressive.jpg"
    path.write_bytes(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes())
    code, out, err = run(capsys, "--model", model, "--image", path)
    assert (code, err) == (0, "")


def loops_back(folder: Path, photo: np.ndarray) -> Path:
    """``folder`` with an image, a subfolder with another, and two links back up (a/up -> .., here -> .)."""
    (folder / "a").mkdir(parents=True)
    cv2.imwrite(str(folder / "top.jpg"), photo)
    cv2.imwrite(str(folder / "a" / "inner.jpg"), photo)
    os.symlink("..", str(folder / "a" / "up"))
    os.symlink(".", str(folder / "here"))
    return folder


@pytest.mark.parametrize("pattern,found", [
    ("{folder}/**/*.jpg", ["a/inner.jpg", "top.jpg"]),
    ("{folder}/**/nothing.jpg", []),
    ("{folder}", ["a/inner.jpg", "top.jpg"]),  # a folder: links to folders are not followed at all
], ids=["glob", "glob without a match", "folder"])
def test_links_back_into_the_folder_end_and_each_image_is_classified_once(pattern, found, model, photo, tmp_path):
    folder = loops_back(tmp_path / "in", photo)
    argument = pattern.format(folder=folder)
    script = ("import sys; from edge.cli import main; "
              "sys.exit(main(['--model', sys.argv[1], '--image', sys.argv[2], '--json']))")
    # In a process of its own: Python's glob never ends here (2 links: 2**40 paths), and the test must not hang.
    done = subprocess.run([sys.executable, "-c", script, str(model), argument], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    sources = sorted(os.path.relpath(json.loads(line)["source"], str(folder)) for line in done.stdout.splitlines())
    assert sources == found, done.stderr
    assert done.returncode == (0 if found else 1), done.stderr


def test_a_glob_matching_too_many_files_is_one_failed_input(model, photo, tmp_path, capsys, monkeypatch):
    import edge.sources.images

    monkeypatch.setattr(edge.sources.images, "MAX_GLOB_MATCHES", 2)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(tmp_path / name), photo)
    code, out, err = run(capsys, "--model", model, "--image", str(tmp_path / "**" / "*.jpg"))
    assert (code, out) == (1, "")
    one_line(err, "edge-classify", "matches more than 2 files")


def test_max_pixels_raises_the_limit(model, photo, tmp_path, capsys):
    path = tmp_path / "big.png"
    big = cv2.resize(photo, (3000, 2000))
    cv2.imwrite(str(path), big)
    code, _, err = run(capsys, "--model", model, "--image", path, "--max-pixels", "7000000")
    assert (code, err) == (0, "")
    code, _, err = run(capsys, "--model", model, "--image", path, "--max-pixels", "1000000")
    assert code == 1
    one_line(err, "edge-classify", "6 megapixels, over the limit of 1")


def test_an_unreadable_subfolder_is_reported_once_and_the_rest_classified(model, photo, tmp_path, capsys,
                                                                         monkeypatch):
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    cv2.imwrite(str(folder / "a.jpg"), photo)
    cv2.imwrite(str(folder / "locked" / "b.jpg"), photo)
    real_scandir = os.scandir

    def scandir(path="."):  # as root (CI containers) mode 000 is no barrier, so refuse it here
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, out, err = run(capsys, "--model", model, "--image", folder)
    assert code == 1
    one_line(err, "edge-classify", "locked", "cannot read this folder: Permission denied")
    assert out.startswith(f"{folder / 'a.jpg'}: ")


# ----------------------------------------------------------------------------------------- outputs

def test_output_equal_to_the_input_is_a_usage_error_and_the_photo_is_kept(model, photo, tmp_path, capsys):
    path = tmp_path / "cat.jpg"
    cv2.imwrite(str(path), photo)
    before = path.read_bytes()
    for output in (path, tmp_path / "." / "cat.jpg"):
        code, out, err = run(capsys, "--model", model, "--image", path, "--output", output)
        assert code == 2 and out == ""
        one_line(err, "edge-classify", "is one of the inputs")
    os.link(str(path), str(tmp_path / "hard.jpg"))
    code, _, err = run(capsys, "--model", model, "--image", path, "--output", tmp_path / "hard.jpg")
    assert code == 2
    assert path.read_bytes() == before


def test_output_names_that_would_collide_get_stable_unique_names(model, photo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a/sub/c.jpg", "b/sub/c.jpg"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(name, photo)
    code, _, err = run(capsys, "--model", model, "--image", "a", "b", "--output", "out")
    assert (code, err) == (0, "")
    first = sorted(p.name for p in Path("out/sub").iterdir())
    assert len(first) == 2 and all(n.startswith("c-") for n in first)
    run(capsys, "--model", model, "--image", "a", "b", "--output", "out")
    assert sorted(p.name for p in Path("out/sub").iterdir()) == first


def test_output_mirrors_the_folder_given_and_is_not_classified_again(model, photo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("photos/cat.jpg", "photos/sub/dog.png"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(name, photo)
    for _ in range(2):  # the second run must not classify the first one's labelled copies inside photos/
        code, out, err = run(capsys, "--model", model, "--image", "photos", "--output", "photos/labelled")
        assert (code, err) == (0, "") and len(out.splitlines()) == 2
    assert sorted(str(p.relative_to("photos/labelled")) for p in Path("photos/labelled").rglob("*.*")) == [
        "cat.jpg", "sub/dog.png"]


def test_outputs_that_cannot_be_written_are_usage_errors_before_any_work(model, photo, tmp_path, capsys):
    path = tmp_path / "cat.jpg"
    cv2.imwrite(str(path), photo)
    (tmp_path / "file").write_text("x")
    for output, message in [(tmp_path / "file" / "out.jpg", "a file is in the way"),
                            (tmp_path / "out.xyz", "unknown image suffix"),
                            (tmp_path / "file" / "sub", "a file is in the way")]:
        code, out, err = run(capsys, "--model", model, "--image", path, path, "--output", output)
        assert (code, out) == (2, "")
        one_line(err, "edge-classify", message)


# ----------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("changes,message", [
    ({"input_side": "1"}, "bad sizes"),
    ({"input_side": "100000"}, "bad sizes"),
    ({"input_side": "48", "resize_side": "55"}, "graph takes 32x32"),
    ({"input": "float"}, "metadata says input float"),
    ({"input": "float", "layout": "NCHW"}, "says float input but its graph takes uint8"),
    ({"std": "[NaN, 0.2, 0.2]"}, "std must be positive finite"),
    ({"mean": "[Infinity, 0.2, 0.2]"}, "mean must be finite"),
    ({"resize_side": "100000000"}, "bad sizes"),
    ({"labels": '["a", "b"]'}, "2 labels but num_classes 3"),
    ({"labels": "not json"}, "metadata is unreadable"),
], ids=["side 1", "side 1e5", "side vs graph", "float on uint8", "float NCHW on uint8", "std NaN", "mean inf", "resize 1e8", "labels",
        "labels json"])
def test_metadata_that_contradicts_the_graph_is_exit_2_at_load(changes, message, model, photo, tmp_path, capsys):
    bad = with_metadata(model, tmp_path / "bad.onnx", **changes)
    path = tmp_path / "cat.jpg"
    cv2.imwrite(str(path), photo)
    code, out, err = run(capsys, "--model", bad, "--image", path)
    assert (code, out) == (2, "")
    one_line(err, "edge-classify", message)


class Raises(nn.Module):
    """Fails at run time with allowed operators only (a scripted ``raise`` is refused before it runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)  # 3 channel means in, 5 expected: a shape error inside the runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.float().mean((1, 2)))


class WrongWidth(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((1, 2))  # 3 "logits" for 5 labels


@pytest.mark.parametrize("module,labels,message", [
    (Raises(), LABELS, "fails on a test input"),
    (WrongWidth(), ["a", "b", "c", "d", "e"], "outputs of shape [1, 3]"),
])
def test_a_torchscript_model_that_fails_at_run_time_is_exit_2_at_load(module, labels, message, photo, tmp_path,
                                                                        capsys):
    meta = artifact_metadata(arch="tiny", labels=labels, input_side=SIDE, resize_side=RESIZE, precision="fp32",
                             input_kind="uint8", source="none", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    path = tmp_path / "bad.ts"
    torch.jit.save(torch.jit.script(module), str(path), _extra_files={"edge_classifier.json": json.dumps(meta)})
    image = tmp_path / "cat.jpg"
    cv2.imwrite(str(image), photo)
    code, out, err = run(capsys, "--model", path, "--image", image)
    assert (code, out) == (2, "")
    one_line(err, "edge-classify", message)


# ----------------------------------------------------------------------------------------- labels, flags

def test_labels_with_control_characters_are_printed_escaped(model, photo, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\x1b[2J\ncup\u202e\nrocket\x07\n")
    forged = with_metadata(model, tmp_path / "forged.onnx", labels=json.dumps(["a\nforged: line", "b\x1b[31m", "c\r"]))
    image = tmp_path / "cat\x1b[1m.jpg"
    cv2.imwrite(str(image), photo)
    for argv in (["--model", model, "--labels", labels], ["--model", forged]):
        code, out, err = run(capsys, *argv, "--image", image, "--topk", "3")
        assert (code, err) == (0, "")
        assert len(out.splitlines()) == 4, out  # the line and three runners-up: no forged line
        assert not any(c in out for c in "\x1b\x07\r\u202e"), repr(out)
        assert "\\x1b" in out
    code, out, _ = run(capsys, "--model", forged, "--image", image, "--json")
    assert json.loads(out)["label"] in ("a\nforged: line", "b\x1b[31m", "c\r")  # JSON keeps the real label


def test_a_special_labels_file_is_refused_without_hanging(model, photo, tmp_path, capsys):
    image = tmp_path / "cat.jpg"
    cv2.imwrite(str(image), photo)
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(str(fifo))
    for labels in ("/dev/zero", fifo):
        code, out, err = run(capsys, "--model", model, "--labels", labels, "--image", image)
        assert (code, out) == (2, "")
        one_line(err, "edge-classify", "not a regular file")
