"""edge-export and edge-train against hostile and broken input: one line on stderr, the right exit code,
no code run from a pickle, no NaN checkpoint saved as the best, 16-bit images read as the device reads them."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import export.cli
from export.train.checkpoint import load_checkpoint
from export.cli import export_main
from export.train.data import open_rgb
from export.cli import train_main

SIDE = 32
FAST = ["--weights", "none", "--arch", "resnet18", "--image-size", str(SIDE), "--augment", "none",
        "--batch-size", "8", "--workers", "0"]


def one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: ") and "Traceback" not in err, err
    return lines[0]


class RunsCode:
    """Unpickling this would run ``touch`` on the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def evil_weights(tmp_path) -> Path:
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": RunsCode(tmp_path / "PWNED")}, str(path))
    return path


def test_an_unsafe_pickle_is_refused_with_its_cause_and_runs_nothing(evil_weights, tmp_path, capsys):
    code = export_main(["--arch", "resnet18", "--weights", str(evil_weights), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    line = one_line(capsys, "edge-export")
    assert "loads safely" in line and "GLOBAL posix.system" in line
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("argv", [["--bogus"], [], ["--out", "x.onnx", "--opset", "zero"]])
def test_edge_export_usage_errors_return_2(argv, capsys):
    assert export_main(argv) == 2  # argparse's SystemExit does not escape main()
    assert "Traceback" not in capsys.readouterr().err


def test_a_module_missing_beyond_the_extra_is_named(monkeypatch, tmp_path, capsys):
    def write_artifact(*_args, **_kwargs):
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")

    monkeypatch.setattr("export.exporter.write_artifact", write_artifact)
    code = export_main(["--arch", "resnet18", "--weights", "none", "--opset", "18", "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    line = one_line(capsys, "edge-export")
    assert "pip install onnxscript" in line and "export extra" not in line
    assert export.cli.missing_module_hint("edge-export", ModuleNotFoundError("x", name="torch")).startswith(
        export.cli.EXTRA_HINT.format("edge-export"))


def write_photo_classes(root: Path, photos, *, per_class: int = 8, bits16: bool = False) -> Path:
    """Two classes of real photos (crops of two skimage photos), 8-bit or 16-bit grayscale PNG."""
    rng = np.random.default_rng(0)
    for name in ("camera", "coffee"):
        gray = cv2.cvtColor(photos[name], cv2.COLOR_RGB2GRAY)
        for split, count in (("train", per_class), ("val", 2)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                y, x = rng.integers(0, 100, 2)
                crop = np.ascontiguousarray(gray[y:y + 200, x:x + 200])
                image = crop.astype(np.uint16) * 257 if bits16 else crop
                assert cv2.imwrite(str(folder / f"{index}.png"), image)
    return root


@pytest.mark.slow  # three epochs of resnet18: about 5 s
def test_a_diverging_run_stops_with_exit_1_and_saves_no_nan_checkpoint(photos, tmp_path, capsys):
    data = write_photo_classes(tmp_path / "data", photos)
    out = tmp_path / "run" / "c.pt"
    # One batch per epoch: the first step's loss is finite, the weights it leaves are not.
    code = train_main(["--data", str(data), "--epochs", "3", "--out", str(out), "--lr", "1e30"] + FAST
                      + ["--batch-size", "32"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    line = [entry for entry in captured.err.splitlines() if entry.startswith("edge-train: ")][-1]
    assert "training diverged in epoch 1" in line and "nothing was saved" in line, line
    assert "Traceback" not in captured.err
    for path in (out, out.with_name("c.last.pt")):
        if path.exists():  # only a good epoch may have been saved
            ckpt = load_checkpoint(path)
            assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values() if t.is_floating_point())


def test_16_bit_grayscale_is_read_as_the_device_reads_it(photos, tmp_path):
    data = write_photo_classes(tmp_path / "data", photos, per_class=1, bits16=True)
    path = next((data / "train" / "camera").glob("*.png"))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    device = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    training = np.asarray(open_rgb(path))
    assert training.shape == device.shape
    assert np.array_equal(training, device)
    assert 30 < training.mean() < 225  # a photo, not all white
