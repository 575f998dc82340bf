"""edge-export and edge-train against hostile and broken input: one line on stderr, the right exit code,
no code run from a pickle, no NaN checkpoint saved as the best, 16-bit images read as the device reads them."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_checks import error_line

import export.cli
from export.train.checkpoint import load_checkpoint
from export.cli import export_main, train_main
from export.train.data import open_rgb

SIDE = 32
FAST = ["--weights", "none", "--arch", "resnet18", "--image-size", str(SIDE), "--augment", "none",
        "--batch-size", "8", "--workers", "0"]


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
    line = error_line(capsys, "edge-export")
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
    line = error_line(capsys, "edge-export")
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


# Issue 20, round three: the export side.

def refuse_loading_models(monkeypatch) -> None:
    """Fail the test if edge-export gets as far as loading a model: the checks must come first."""
    def loads(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr("export.load.load_model", loads)
    monkeypatch.setattr("export.load.load_checkpoint_model", loads)


def test_labels_with_a_byte_order_mark_lose_it_on_both_sides(tmp_path):
    from edge.model.artifact import read_labels
    from export.load import read_labels_file

    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n", encoding="utf-8-sig")  # what Windows Notepad saves as "UTF-8"
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_labels_file(path) == ["cat", "dog"]
    assert read_labels(path) == ("cat", "dog")


def test_a_labels_file_that_is_not_utf8_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    refuse_loading_models(monkeypatch)
    labels = tmp_path / "labels.txt"
    labels.write_bytes("café\nthé\n".encode("latin-1"))
    code = export_main(["--weights", "none", "--labels", str(labels), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "not UTF-8" in error_line(capsys, "edge-export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt"]


def _unusable_outputs(tmp_path: Path) -> dict:
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "file").write_text("x")
    good = str(tmp_path / "good.onnx")
    return {
        "a folder with a model's name": (["--out", good, "--out", str(tmp_path / "folder.onnx")], "is a folder"),
        "a folder for --target all": (["--target", "all", "--out", str(tmp_path)], "is a folder"),
        "a path under a file": (["--out", good, "--out", str(tmp_path / "file" / "m.ts")], "file is not a folder"),
        "a place nobody may write": (["--out", good, "--out", "/sys/edge-export-test.onnx"], "cannot write"),
        "an unknown suffix": (["--out", good, "--out", str(tmp_path / "m.engine")], "unknown output suffix"),
        "a side file that is a folder": (["--target", "deepstream", "--out", str(tmp_path / "d.deepstream.onnx")],
                                         "d.deepstream.labels.txt is a folder"),
    }


@pytest.mark.parametrize("case", ["a folder with a model's name", "a folder for --target all", "a path under a file",
                                  "a place nobody may write", "an unknown suffix", "a side file that is a folder"])
def test_every_out_is_checked_before_any_model_is_loaded(case, tmp_path, monkeypatch, capsys):
    refuse_loading_models(monkeypatch)
    (tmp_path / "d.deepstream.labels.txt").mkdir()
    argv, message = _unusable_outputs(tmp_path)[case]
    before = set(tmp_path.rglob("*"))
    assert export_main(["--weights", "none"] + argv) == 2
    assert message in error_line(capsys, "edge-export")
    assert set(tmp_path.rglob("*")) == before  # nothing written, not even a probe


def test_a_temporary_left_by_kill_9_is_removed_by_the_next_export(tmp_path):
    """A real ``kill -9`` in the middle of writing: its temporary stays, and the next write beside it removes it;
    a temporary whose writer still runs, and names not of our pattern, are left alone."""
    import signal
    import subprocess
    import sys

    from export.exporter import atomic_path

    dest = tmp_path / "m.onnx"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom export.exporter import atomic_path\n"
         "with atomic_path(Path(sys.argv[1])) as tmp:\n    tmp.write_bytes(b'x' * 4096)\n"
         "    print(tmp.name, flush=True)\n    time.sleep(120)\n", str(dest)],
        stdout=subprocess.PIPE, universal_newlines=True)
    try:
        stale = tmp_path / writer.stdout.readline().strip()
        assert stale.is_file() and f".tmp-{writer.pid}-" in stale.name
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        writer.stdout.close()
    assert stale.is_file()  # kill -9 runs no cleanup
    alive = tmp_path / f".m.tmp-{os.getpid()}-abcdefgh.onnx"  # a writer that still runs (this one)
    foreign = tmp_path / ".m.tmp-notapid.onnx"
    other = tmp_path / f".m.jetson.tmp-{writer.pid}-abcdefgh.onnx"  # another target's: its own export clears it
    for path in (alive, foreign, other):
        path.write_bytes(b"x")
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"model")
    assert dest.read_bytes() == b"model"
    assert not stale.exists()
    assert alive.exists() and foreign.exists() and other.exists()


CHECKPOINT_CASES = {
    "input side 0": ({"input_side": 0}, "bad sizes: input 0"),
    "input side -1": ({"input_side": -1}, "bad sizes: input -1"),
    "input side 60000": ({"input_side": 60000, "resize_side": 68571}, "bad sizes: input 60000"),
    "input side as text": ({"input_side": "32"}, "input side must be a whole number, not '32'"),
    "input side as a bool": ({"input_side": True}, "input side must be a whole number"),
    "resize side as a float": ({"resize_side": 37.5}, "resize side must be a whole number"),
    "std 0": ({"std": [0.0, 0.2, 0.2]}, "std must be positive finite numbers"),
    "a 2-value mean": ({"mean": [0.5, 0.5]}, "mean must hold 3 values, not 2"),
    "mean as text": ({"mean": "0.5"}, "mean must be a list of 3 numbers"),
    "std of strings": ({"std": ["a", "b", "c"]}, "std must be a list of 3 numbers"),
    "a NaN mean": ({"mean": [float("nan"), 0.5, 0.5]}, "mean must be finite numbers"),
    "arch not a name": ({"arch": ["resnet18"]}, "arch is not a name"),
    "model not a dict": ({"model": [1, 2]}, "model is not a state dict"),
    "model of strings": ({"model": {"fc.weight": "x"}}, "model is not a state dict"),
}


def write_checkpoint(path: Path, **changes) -> Path:
    from export.train.checkpoint import CHECKPOINT_FORMAT

    ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "arch": "resnet18", "classes": ["a", "b"], "model": {},
            "input_side": SIDE, "resize_side": 37, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    ckpt.update(changes)
    torch.save(ckpt, str(path))
    return path


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_a_hostile_checkpoint_is_one_line_and_exit_2(case, tmp_path, capsys):
    changes, message = CHECKPOINT_CASES[case]
    ckpt = write_checkpoint(tmp_path / "c.pt", **changes)
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    line = error_line(capsys, "edge-export")
    assert message in line and "unexpected" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_checkpoint_that_is_no_dict_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.pt"
    torch.save([1, 2, 3], str(path))
    assert export_main(["--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not an edge-train checkpoint" in error_line(capsys, "edge-export")


def test_the_checkpoint_and_the_artifact_are_held_to_the_same_checks(tmp_path, capsys):
    """One place (edge.contract): the same bad std reads the same in a checkpoint and in an artifact's metadata."""
    from edge.model.artifact import ArtifactError, spec_from_metadata
    from edge.contract import Key

    export_main(["--checkpoint", str(write_checkpoint(tmp_path / "c.pt", std=[0, 1, 1])),
                 "--out", str(tmp_path / "m.onnx")])
    host = error_line(capsys, "edge-export")
    with pytest.raises(ArtifactError) as device:
        spec_from_metadata({Key.STD: "[0, 1, 1]", Key.LABELS: '["a", "b"]'}, input_shape=[None, 224, 224, 3],
                           input_dtype="uint8", num_classes=2)
    assert "std must be positive finite numbers, not [0.0, 1.0, 1.0]" in host
    assert "std must be positive finite numbers, not [0.0, 1.0, 1.0]" in str(device.value)


ROW = {"epoch": 1, "lr": 0.001, "train_loss": 0.5, "train_acc": 0.5, "val_loss": 0.5, "val_acc": 0.5,
       "val_correct": 1, "val_images": 2}


def _checkpoint(**changes) -> dict:
    """A resumable checkpoint of a 2-class resnet18 (no weights: every check below comes before them)."""
    from export.train.checkpoint import CHECKPOINT_FORMAT

    ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "arch": "resnet18", "classes": ["a", "b"], "model": {},
            "input_side": 32, "resize_side": 37, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "optimizer": {}, "lr_scheduler": {}, "epoch": 1, "best_acc": 0.5, "best_epoch": 1, "history": [ROW],
            "args": {"arch": "resnet18", "lr": 0.001, "image_size": 32, "data": "/nonexistent"}}
    for key, value in changes.items():
        if key.startswith("args."):
            ckpt["args"][key[5:]] = value
        else:
            ckpt[key] = value
    return ckpt


HOSTILE_CHECKPOINTS = {
    "input side 0": ({"input_side": 0}, "checkpoint's bad sizes: input 0"),
    "input side -1": ({"input_side": -1}, "bad sizes: input -1"),
    "input side 60000": ({"input_side": 60000, "resize_side": 68571}, "bad sizes: input 60000"),
    "input side a string": ({"input_side": "224"}, "input side must be a whole number"),
    "input side a bool": ({"input_side": True}, "input side must be a whole number"),
    "resize below the side": ({"resize_side": 16}, "bad sizes: input 32, resize 16"),
    "std 0": ({"std": [0.25, 0.0, 0.25]}, "std must be positive finite numbers"),
    "std NaN": ({"std": [float("nan")] * 3}, "std must be positive finite numbers"),
    "a 2-value mean": ({"mean": [0.5, 0.5]}, "mean must hold 3 values, not 2"),
    "mean of strings": ({"mean": ["a", "b", "c"]}, "mean must be a list of 3 numbers"),
    "arch a number": ({"arch": 18}, "arch is not a name"),
    "model a list": ({"model": [1, 2]}, "model is not a state dict of tensors"),
    "val images not paths": ({"val_images": [1, 2]}, "val_images is not a list of paths"),
    "epoch a string": ({"epoch": "1"}, "epoch is not a whole number of epochs >= 0"),
    "best epoch ahead": ({"best_epoch": 7}, "best_epoch is not an epoch already done"),
    "optimizer a list": ({"optimizer": []}, "optimizer is not a dict"),
    "history of strings": ({"history": ["x"]}, "history is not one row of numbers per epoch done"),
    "history too short": ({"epoch": 1, "history": []}, "history is not one row of numbers per epoch done"),
    "no optimizer": ({"optimizer": None, "lr_scheduler": None}, "optimizer is not a dict"),
    "args image size 60000": ({"args.image_size": 60000}, "args.image_size is not a whole number of pixels"),
    "args batch size 0": ({"args.batch_size": 0}, "args.batch_size is not a whole number >= 1"),
    "args lr a string": ({"args.lr": "fast"}, "args.lr is not a number above 0"),
    "args mode unknown": ({"args.mode": "everything"}, "args.mode is not finetune or features"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CHECKPOINTS))
def test_a_hostile_checkpoint_to_resume_is_one_line_and_exit_2(case, tmp_path, capsys):
    from export.train.checkpoint import save_checkpoint

    changes, message = HOSTILE_CHECKPOINTS[case]
    path = tmp_path / "h.last.pt"
    ckpt = _checkpoint(**{k: v for k, v in changes.items() if v is not None})
    for key in (k for k, v in changes.items() if v is None):
        del ckpt[key]
    torch.save(ckpt, str(path)) if case == "no optimizer" else save_checkpoint(ckpt, path)
    assert train_main(["--resume", str(path), "--epochs", "2"]) == 2
    line = error_line(capsys, "edge-train")
    assert message in line or (case == "no optimizer" and "lacks optimizer, lr_scheduler" in line), line
    assert "unexpected" not in line and not (tmp_path / "h.pt").exists()
    if not case.startswith(("args", "history")) and case not in ("epoch a string", "best epoch ahead",
                                                                 "optimizer a list", "no optimizer"):
        assert export_main(["--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]) == 2  # the same check
        assert message in error_line(capsys, "edge-export")


def test_optimizer_state_that_does_not_fit_is_one_line(tmp_path, capsys):
    from export.train.checkpoint import save_checkpoint
    from export.zoo import build_model

    path = tmp_path / "o.last.pt"
    data = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (data / split / name).mkdir(parents=True)
            cv2.imwrite(str(data / split / name / "0.png"), np.full((32, 32), 128 if name == "a" else 30, np.uint8))
    model = {k: v for k, v in build_model("resnet18", 2).state_dict().items()}
    save_checkpoint(_checkpoint(model=model, optimizer={"state": {}, "param_groups": [{"params": [0]}]},
                                **{"args.data": str(data)}), path)
    assert train_main(["--resume", str(path), "--epochs", "2", "--workers", "0"]) == 2
    assert "the checkpoint's optimizer state does not fit its model" in error_line(capsys, "edge-train")
