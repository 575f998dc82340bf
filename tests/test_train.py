"""edge-train: learns real handwritten digits, checkpoints that round-trip, resume, freezing, export parity, bad input.

The data are scikit-learn's handwritten digits (real scans, 8x8) scaled up to 32 px PNGs: four classes,
75 train and 25 val images each. resnet18 from scratch learns them in two epochs of a second each;
resnet18 rather than mobilenet_v2 for the parity test because a barely trained mobilenet_v2 is chaotic
(a one-grey-level difference between PIL's and OpenCV's resize flips some of its answers). Those runs
(89 MB checkpoints, several seconds each) are the slow set; the fast set checks the same round trip
on ``tiny``: mobilenet_v2 trained in features mode (only the head learns) for one epoch on 2 x 16 images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from cli_checks import usage_error
from PIL import Image

from export.train.checkpoint import CHECKPOINT_FORMAT, checkpoint_val_images, load_checkpoint, save_checkpoint
from export.cli import train_main as main
from export import quickstart
from export.zoo import build_model

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["digit0", "digit1", "digit2", "digit3"]
SIDE = 32
FAST = ["--weights", "none", "--arch", "resnet18", "--image-size", str(SIDE), "--augment", "none",
        "--batch-size", "16", "--workers", "0"]


def write_digits(root: Path, *, per_class: int = 100, val_every: int = 4, classes: int = 4, side: int = SIDE) -> Path:
    """``root/train/digitN/*.png`` and ``root/val/digitN/*.png``: edge-quickstart's own digits folder."""
    return quickstart.write_digits(root, per_class=per_class, val_every=val_every, classes=classes, side=side)


def files_beside(out: Path) -> Dict[str, Path]:
    return {"best": out, "last": out.with_name("c.last.pt"), "metrics": out.with_name("c.metrics.json"),
            "curves": out.with_name("c.curves.png"), "grid": out.with_name("c.val.png")}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Two classes, 16 train and 4 val images each: enough for one quick epoch."""
    return write_digits(tmp_path_factory.mktemp("small"), per_class=20, val_every=5, classes=2)


TINY = ["--weights", "none", "--arch", "mobilenet_v2", "--mode", "features", "--image-size", str(SIDE),
        "--augment", "none", "--batch-size", "8", "--workers", "0", "--lr", "0.01"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, small) -> Path:
    """One epoch of mobilenet_v2's head on ``small``: the fast set's trained checkpoint (9 MB)."""
    out = tmp_path_factory.mktemp("tiny") / "c.pt"
    assert main(["--data", str(small), "--epochs", "1", "--out", str(out)] + TINY) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits) -> Path:
    """Two epochs of resnet18 from scratch; the best checkpoint's path."""
    out = tmp_path_factory.mktemp("run") / "c.pt"
    assert main(["--data", str(digits), "--epochs", "2", "--out", str(out)] + FAST) == 0
    return out


def val_accuracy_of(model: torch.nn.Module, samples: List[Path], targets: List[int]) -> int:
    from export.train.data import eval_transform, open_rgb

    transform = eval_transform(side=SIDE, resize=37)
    with torch.no_grad():
        logits = model.eval()(torch.stack([transform(open_rgb(p)) for p in samples]))
    return int((logits.argmax(1) == torch.tensor(targets)).sum())


@pytest.mark.slow
def test_learns_the_digits_and_writes_everything_beside_the_checkpoint(trained, digits):
    files = files_beside(trained)
    assert all(path.is_file() for path in files.values()), sorted(p.name for p in trained.parent.iterdir())
    assert not [p for p in trained.parent.iterdir() if ".tmp-" in p.name]  # atomic writes leave no temp file
    ckpt = load_checkpoint(trained)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["arch"] == "resnet18" and ckpt["classes"] == CLASSES
    assert (ckpt["input_side"], ckpt["resize_side"]) == (SIDE, 37)  # round(32 / 0.875)
    assert ckpt["epoch"] in (1, 2) and len(ckpt["history"]) == ckpt["epoch"]
    assert ckpt["best_acc"] > 0.6, ckpt["history"]  # chance is 0.25
    assert ckpt["args"]["data"] == str(digits) and ckpt["args"]["lr"] == 0.001
    metrics = json.loads(files["metrics"].read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert metrics["best_val_acc"] == ckpt["best_acc"] and metrics["epochs"][0]["val_images"] == 100
    for name in ("curves", "grid"):
        with Image.open(files[name]) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100
            image.verify()


def test_a_tiny_run_writes_everything_and_round_trips(tiny, small):
    files = files_beside(tiny)
    assert all(path.is_file() for path in files.values()), sorted(p.name for p in tiny.parent.iterdir())
    assert not [p for p in tiny.parent.iterdir() if ".tmp-" in p.name]
    ckpt = load_checkpoint(tiny)
    assert ckpt["classes"] == CLASSES[:2] and ckpt["epoch"] == 1 and ckpt["world_size"] == 1
    assert ckpt["global_step"] == 4 and ckpt["lr_scale"] == 1.0 and ckpt["args"]["amp"] is None  # 32 images / 8
    assert all(v.dtype != torch.bfloat16 and v.is_contiguous() for v in ckpt["model"].values())
    metrics = json.loads(files["metrics"].read_text())
    assert metrics["format"] == "edge-train-metrics" and metrics["epochs"][0]["val_images"] == 8
    from export.load import load_checkpoint_model

    loaded = load_checkpoint_model(tiny)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in ckpt["model"].items())
    val = sorted(p for p in (small / "val").rglob("*.png"))
    assert val_accuracy_of(loaded.model, val, [CLASSES.index(p.parent.name) for p in val]) == \
        ckpt["history"][0]["val_correct"]


def test_a_tiny_run_exports_and_classifies_as_it_validated(tiny, small, tmp_path, capsys):
    from edge.cli import main as classify_main
    from export.cli import export_main

    onnx = tmp_path / "tiny.onnx"
    assert export_main(["--checkpoint", str(tiny), "--precision", "fp32", "--out", str(onnx)]) == 0
    assert "8/8" in capsys.readouterr().out
    assert classify_main(["--model", str(onnx), "--image", str(small / "val"), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 8
    assert sum(r["label"] == Path(r["source"]).parent.name for r in records) == \
        load_checkpoint(tiny)["history"][0]["val_correct"]


@pytest.mark.slow
def test_checkpoint_round_trips_into_the_same_model_and_accuracy(trained):
    from export.load import load_checkpoint_model

    ckpt = load_checkpoint(trained)
    loaded = load_checkpoint_model(trained)
    assert loaded.labels == CLASSES and (loaded.input_side, loaded.resize_side) == (SIDE, 37)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in ckpt["model"].items())
    images = checkpoint_val_images(ckpt)
    assert len(images) == 32 and [p.parent.name for p in images[:4]] == CLASSES  # spread across the classes
    assert loaded.verify_images == images
    val = sorted(p for p in (Path(ckpt["args"]["data"]) / "val").rglob("*.png"))
    best = ckpt["history"][ckpt["best_epoch"] - 1]
    assert val_accuracy_of(loaded.model, val, [CLASSES.index(p.parent.name) for p in val]) == best["val_correct"]


@pytest.mark.slow
def test_resume_goes_on_as_if_never_stopped(trained, digits, tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert main(["--data", str(digits), "--epochs", "1", "--out", str(out)] + FAST) == 0
    assert load_checkpoint(files_beside(out)["last"])["epoch"] == 1
    assert main(["--resume", str(files_beside(out)["last"]), "--epochs", "2"]) == 0
    resumed, straight = load_checkpoint(files_beside(out)["last"]), load_checkpoint(files_beside(trained)["last"])
    assert resumed["epoch"] == 2 and [row["epoch"] for row in resumed["history"]] == [1, 2]
    assert len(json.loads(files_beside(out)["metrics"].read_text())["epochs"]) == 2
    for key, value in straight["model"].items():  # same seeds, same order: the same weights
        assert torch.allclose(resumed["model"][key].float(), value.float(), atol=1e-5), key
    capsys.readouterr()
    assert main(["--resume", str(files_beside(out)["last"]), "--epochs", "2"]) == 0
    assert "already trained 2 of 2 epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_export_then_edge_classify_reproduces_the_val_accuracy(trained, digits, tmp_path, capsys):
    from edge.cli import main as classify_main
    from export.cli import export_main

    onnx = tmp_path / "digits.onnx"
    assert export_main(["--checkpoint", str(trained), "--precision", "fp32", "--out", str(onnx)]) == 0
    assert "32/32" in capsys.readouterr().out  # verified on the checkpoint's own val images
    assert classify_main(["--model", str(onnx), "--image", str(digits / "val"), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    correct = sum(r["label"] == Path(r["source"]).parent.name for r in records)
    ckpt = load_checkpoint(trained)
    best = ckpt["history"][ckpt["best_epoch"] - 1]
    assert len(records) == best["val_images"] == 100
    assert correct == best["val_correct"]


@pytest.mark.parametrize("arch, flags, frozen, trained", [
    ("mobilenet_v2", ["--mode", "features"], ["features."], []),
    pytest.param("mobilenet_v2", ["--freeze", "3"], ["features.0.", "features.1.", "features.2."], ["features.3."],
                 marks=pytest.mark.slow),
    pytest.param("resnet18", ["--freeze", "5"], ["conv1.", "bn1.", "layer1."], ["layer2."], marks=pytest.mark.slow),
])
def test_frozen_layers_keep_their_weights_and_statistics(arch, flags, frozen, trained, small, tmp_path):
    torch.manual_seed(3)
    start = build_model(arch, 1000).state_dict()  # an ImageNet-shaped file: its head is replaced
    weights = tmp_path / "start.pth"
    torch.save(start, weights)
    out = tmp_path / "c.pt"
    assert main(["--data", str(small), "--arch", arch, "--weights", str(weights), "--image-size", str(SIDE),
                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--lr", "0.01", "--out", str(out)] + flags) == 0
    after = load_checkpoint(out)["model"]

    def unchanged(prefix: str) -> bool:  # weights and BatchNorm running statistics alike
        return all(torch.equal(start[k], after[k]) for k in start if k.startswith(prefix))

    assert [p for p in frozen if not unchanged(p)] == []
    assert [p for p in trained if unchanged(p)] == []
    head = "classifier.1.weight" if arch == "mobilenet_v2" else "fc.weight"
    assert after[head].shape[0] == 2


def test_pretrained_weights_come_through_torchvisions_download_code(small, tmp_path, monkeypatch):
    """torchvision finds the file in its cache, as after a download: no network."""
    import torchvision.models

    url = torchvision.models.get_model_weights("mobilenet_v2").DEFAULT.url
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(4)
    start = build_model("mobilenet_v2", 1000).state_dict()
    torch.save(start, cache / Path(url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "c.pt"
    assert main(["--data", str(small), "--arch", "mobilenet_v2", "--weights", "pretrained", "--mode", "features",
                 "--image-size", str(SIDE), "--epochs", "1", "--workers", "0", "--out", str(out)]) == 0
    after = load_checkpoint(out)["model"]
    assert all(torch.equal(after[k], v) for k, v in start.items() if not k.startswith("classifier.1."))
    assert after["classifier.1.weight"].shape == (2, 1280)


def test_pretrained_offline_says_how_to_pass_a_local_file(small, tmp_path, monkeypatch, capsys):
    import torchvision.models._api as api

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    code = main(["--data", str(small), "--out", str(tmp_path / "c.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--weights PATH" in err and "mobilenet_v2-7ebf99e0.pth" in err


def test_unreadable_images_are_skipped_and_counted(small, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(small, data)
    train = data / "train" / "digit0"
    good = sorted(train.glob("*.png"))[0]
    (train / "empty.jpg").write_bytes(b"")
    (train / "notes.png").write_text("not an image")
    (train / "cut.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (train / "README.txt").write_text("not an image suffix: ignored, not counted")
    jpeg = train / "cut.jpg"  # its headers pass the quick check at start; it fails to decode in the loader
    Image.open(good).convert("RGB").resize((128, 128)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    out = tmp_path / "c.pt"
    with caplog.at_level("WARNING"):  # batches of 10: no last batch of one image to drop
        assert main(["--data", str(data), "--epochs", "1", "--out", str(out)] + TINY + ["--batch-size", "10"]) == 0
    assert "skipped 3 unreadable image(s)" in caplog.text and "cut.jpg" in caplog.text
    ckpt = load_checkpoint(out)
    assert ckpt["skipped_images"] == 3 and ckpt["train_images"] == 33  # 32 good + cut.jpg
    assert ckpt["history"][0]["train_images"] == 32


@pytest.mark.slow
def test_edge_train_command_splits_a_folder_of_class_folders(digits, tmp_path):
    """The installed console script, in a subprocess; a folder without val/ is split 25% per class."""
    script = Path(sys.executable).with_name("edge-train")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "export.train"]
    out = tmp_path / "runs" / "c.pt"
    result = subprocess.run(command + ["--data", str(digits / "train"), "--val-fraction", "0.25", "--epochs", "1",
                                       "--out", str(out)] + FAST[:-2] + ["--workers", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "split 25% of each class off for validation" in result.stdout
    assert "Traceback" not in result.stderr
    ckpt = load_checkpoint(out)
    assert ckpt["history"][0]["val_images"] == 4 * 19 and ckpt["train_images"] == 4 * 56  # round(75 * 0.25) = 19
    assert all("/train/" in name for name in ckpt["val_images"])


def test_missing_torch_names_the_extra(tmp_path):
    code = "import sys; sys.modules['torch'] = None; from export.cli import train_main; sys.exit(train_main(['--help']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.startswith("edge-train: ") and "pip install '.[export]' in the edge-classifier checkout" in result.stderr
    assert result.stderr.count("\n") == 1


def _bad_inputs(tmp_path: Path, small: Path) -> Dict[str, tuple]:
    root = tmp_path / "bad"
    (root / "empty").mkdir(parents=True)
    (root / "flat").mkdir()
    shutil.copy(next(small.rglob("*.png")), root / "flat" / "a.png")
    one = root / "one" / "cats"
    one.mkdir(parents=True)
    shutil.copy(next(small.rglob("*.png")), one / "a.png")
    mismatched = root / "mismatched"
    shutil.copytree(small, mismatched)
    (mismatched / "val" / "digit1").rename(mismatched / "val" / "digit7")
    only_val = root / "only_val"
    shutil.copytree(small / "val", only_val / "val")
    state = root / "weights.pth"
    torch.save(build_model("resnet18", 2).state_dict(), state)
    junk = root / "junk.pt"
    junk.write_bytes(b"not a zip, not a pickle")
    resnet_ckpt = root / "r.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "version": 1, "arch": "resnet18", "classes": ["digit0", "digit1"],
                     "model": {}, "input_side": 32, "resize_side": 37, "mean": [0.5] * 3, "std": [0.5] * 3,
                     "args": {"arch": "resnet18", "lr": 0.001, "data": str(small), "out": str(root / "x.pt")}},
                    resnet_ckpt)
    bad_init = root / "i.pt"
    save_checkpoint({**load_checkpoint(resnet_ckpt), "init": {"file": "deployed.pt", "classes": "digit0"}}, bad_init)
    data = ["--data", str(small)]
    return {
        "missing folder": (["--data", str(root / "nope")], "no such folder"),
        "no class folders": (["--data", str(root / "empty")], "has no class folders"),
        "only files": (["--data", str(root / "flat")], "has no class folders"),
        "one class only": (["--data", str(root / "one")], "one class only (cats)"),
        "mismatched classes": (["--data", str(mismatched)], "only in train/: digit1; only in val/: digit7"),
        "val without train": (["--data", str(only_val)], "has val/ but no train/"),
        "unknown arch": (data + ["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
        "resume a weights file": (["--resume", str(state)], "is not an edge-train checkpoint"),
        "resume junk": (["--resume", str(junk)], "is not a checkpoint that loads safely"),
        "resume missing": (["--resume", str(root / "none.pt")], "checkpoint not found"),
        "resume with another arch": (["--resume", str(resnet_ckpt), "--arch", "alexnet"],
                                     "--arch alexnet differs from the resumed run's resnet18"),
        "no --data": (["--weights", "none"], "--data is required"),
        "weights not a file": (data + ["--weights", str(root / "nope.pth")], "weights file not found"),
        "freeze too many": (data + ["--arch", "resnet18", "--weights", "none", "--freeze", "12"],
                            "--freeze 12: resnet18 has 9 backbone blocks"),
        "freeze with features": (data + ["--mode", "features", "--freeze", "2"], "--freeze goes with --mode finetune"),
        "image too small": (data + ["--arch", "alexnet", "--weights", "none", "--image-size", "32"],
                            "--image-size 32 is too small for alexnet"),
        "bad flag value": (data + ["--epochs", "0"], "must be at least 1"),
        "init with resume": (["--init", str(resnet_ckpt), "--resume", str(resnet_ckpt)],
                             "--init starts a new run from a model and --resume goes on with a run"),
        "init with weights": (data + ["--init", str(resnet_ckpt), "--weights", "none"], "--init gives the weights"),
        "init with another arch": (data + ["--init", str(resnet_ckpt), "--arch", "alexnet"],
                                   "--arch alexnet differs from the --init model's resnet18"),
        "init missing": (data + ["--init", str(root / "none.pt")], f"--init {root / 'none.pt'}: no such file"),
        "init a weights file": (data + ["--init", str(state)], "is not an edge-train checkpoint"),
        "init without a head": (data + ["--init", str(resnet_ckpt)], "its fc is not a resnet18 head for its 2 classes"),
        "init record not a record": (data + ["--init", str(bad_init)],
                                     "init is not a record of the model the run started from"),
    }


BAD_CASES = ["missing folder", "no class folders", "only files", "one class only", "mismatched classes",
             "val without train", "unknown arch", "resume a weights file", "resume junk", "resume missing",
             "resume with another arch", "no --data", "weights not a file", "freeze too many", "freeze with features",
             "image too small", "bad flag value", "init with resume", "init with weights", "init with another arch",
             "init missing", "init a weights file", "init without a head", "init record not a record"]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, small) -> Dict[str, tuple]:
    """Built once for all the cases (each only reads them)."""
    return _bad_inputs(tmp_path_factory.mktemp("bad"), small)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_line_and_exit_2(case, bad_inputs, tmp_path, capsys):
    argv, message = bad_inputs[case]
    code = main(argv + ["--out", str(tmp_path / "out" / "c.pt")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    if case != "bad flag value":  # argparse prints its usage first
        assert err.startswith("edge-train: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "c.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_a_gpu_is_a_usage_error(small, tmp_path, capsys):
    assert main(["--data", str(small), "--device", "cuda", "--out", str(tmp_path / "c.pt")]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


def test_out_may_not_overwrite_the_weights_it_starts_from(small, tmp_path, capsys):
    weights = tmp_path / "runs" / "a.pt"
    weights.parent.mkdir()
    torch.save(build_model("resnet18", 2).state_dict(), weights)
    before = weights.read_bytes()
    code = main(["--data", str(small), "--arch", "resnet18", "--weights", str(weights), "--out", str(weights)])
    err = capsys.readouterr().err
    assert code == 2 and "would overwrite the --weights file" in err and err.count("\n") == 1, err
    assert weights.read_bytes() == before


@pytest.mark.slow  # bf16 convolutions on a CPU without bf16 instructions: tens of seconds
def test_amp_on_the_cpu_trains_in_bf16_and_saves_fp32_weights(small, tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert main(["--data", str(small), "--epochs", "1", "--out", str(out), "--amp"] + TINY) == 0
    assert "AMP bf16" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt["args"]["amp"] is True
    assert {v.dtype for v in ckpt["model"].values()} <= {torch.float32, torch.int64}


def test_amp_and_channels_last_default_on_for_cuda_only(monkeypatch):
    from export.train.train import pick_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (pick_precision(None, cpu).dtype, pick_precision(None, cpu).channels_last) == (None, False)
    assert pick_precision(True, cpu).dtype == torch.bfloat16
    assert (pick_precision(False, cuda).dtype, pick_precision(False, cuda).channels_last) == (None, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_precision(None, cuda).dtype == torch.float16  # with a GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_precision(None, cuda).dtype == torch.bfloat16


def _copy_run(tiny: Path, folder: Path, name: str) -> Path:
    """The tiny run's last checkpoint as ``folder/<name>.last.pt``."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(files_beside(tiny)["last"], folder / f"{name}.last.pt"))


def test_resume_writes_to_its_own_output_never_to_a_path_from_the_checkpoint(tiny, tmp_path, capsys):
    user = tmp_path / "notes.txt"
    user.write_text("mine")
    ckpt = load_checkpoint(files_beside(tiny)["last"])
    ckpt["args"]["out"] = str(user)  # a checkpoint from elsewhere naming a user's file
    hostile = tmp_path / "run" / "h.last.pt"
    save_checkpoint(ckpt, hostile)
    assert main(["--resume", str(hostile), "--epochs", "2"]) == 0
    assert user.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]
    assert load_checkpoint(hostile)["epoch"] == 2  # went on beside the file given: run/h.last.pt, run/h.pt...
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {"h.pt", "h.last.pt", "h.metrics.json", "h.curves.png",
                                                               "h.val.png"}
    capsys.readouterr()
    assert main(["--resume", str(tiny), "--epochs", "2"]) == 2  # not a .last.pt: --out must say where
    assert "name the run's output with --out" in capsys.readouterr().err


@pytest.mark.parametrize("existing", ["c.pt", "c.last.pt", "c.metrics.json", "c.curves.png", "c.val.png"])
def test_an_existing_file_edge_train_did_not_write_is_never_replaced(existing, small, tmp_path, capsys):
    user = tmp_path / existing
    user.write_bytes(b"\x89PNG\r\n\x1a\n a user's file" if existing.endswith(".png") else b"{}")
    code = main(["--data", str(small), "--epochs", "1", "--out", str(tmp_path / "c.pt")] + TINY)
    err = capsys.readouterr().err
    assert code == 2 and f"{user} exists and was not written by edge-train" in err and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.iterdir()] == [existing] and user.read_bytes()[:4] in (b"\x89PNG", b"{}")


def test_when_no_epoch_improves_the_summary_says_so(tiny, tmp_path, capsys):
    ckpt = load_checkpoint(files_beside(tiny)["last"])
    ckpt["best_acc"] = 1.0  # nothing beats it: ties keep the earlier epoch
    last = tmp_path / "b.last.pt"
    save_checkpoint(ckpt, last)
    assert main(["--resume", str(last), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "(best epoch)" not in out, out
    assert "no epoch of this run (epoch 2) beat the val accuracy of epoch 1" in out
    assert f"{tmp_path / 'b.pt'} was not written" in out and not (tmp_path / "b.pt").exists()
    assert f"edge-export --checkpoint {last}" in out


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_temporaries_left_by_kill_9_are_removed_by_the_next_run(tiny, tmp_path):
    last = _copy_run(tiny, tmp_path, "k")
    killed = ("import os, signal, sys; from pathlib import Path; from export.train.files import atomic_path\n"
              "with atomic_path(Path(sys.argv[1])) as tmp:\n"
              "    tmp.write_bytes(b'half a checkpoint'); os.kill(os.getpid(), signal.SIGKILL)")
    result = subprocess.run([sys.executable, "-c", killed, str(tmp_path / "k.pt")], cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -9
    [stale] = [p for p in tmp_path.iterdir() if p.name.startswith(".k.tmp-")]
    writing = tmp_path / f".k.metrics.tmp-{os.getpid()}-abc.json"  # a run still writing: kept
    writing.write_text("{}")
    other = tmp_path / ".notes.tmp-999999999-abc.txt"  # not one of this run's names: kept
    other.write_text("")
    assert main(["--resume", str(last), "--epochs", "1"]) == 0  # already done: nothing trained, still cleaned
    assert not stale.exists() and writing.exists() and other.exists()


@pytest.mark.slow
def test_two_processes_train_as_one_write_once_and_resume_on_one(digits, tmp_path, capsys):
    """torchrun with 2 CPU processes (gloo) against one process with the same global batch and learning rate.

    --mode features keeps BatchNorm in eval mode, so the two runs compute the same gradients on the same
    batches (the order comes from (seed, epoch), whatever the number of processes): the accuracies agree to
    float rounding. In finetune mode each process's BatchNorm sees its own 8 images, not 16, and the runs
    drift apart (without --sync-bn, which needs CUDA).
    """
    from edge.cli import main as classify_main
    from export.cli import export_main

    flags = ["--data", str(digits), "--weights", "none", "--arch", "resnet18", "--mode", "features",
             "--image-size", str(SIDE), "--augment", "none", "--workers", "0", "--epochs", "2", "--device", "cpu"]
    one = tmp_path / "one" / "c.pt"
    assert main(flags + ["--batch-size", "16", "--lr", "0.02", "--out", str(one)]) == 0
    two = tmp_path / "two" / "c.pt"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "export.train"] + flags + ["--batch-size", "8", "--lr", "0.01", "--out", str(two)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("train loss") == 1 and result.stdout.count("wrote ") == 1  # rank 0 alone prints
    assert sorted(p.name for p in two.parent.iterdir()) == sorted(p.name for p in files_beside(two).values())
    ckpt, alone = load_checkpoint(files_beside(two)["last"]), load_checkpoint(files_beside(one)["last"])
    assert (ckpt["world_size"], ckpt["global_batch"], ckpt["lr_scale"], ckpt["global_step"]) == (2, 16, 2.0, 2 * 19)
    assert [row["lr"] for row in ckpt["history"]] == [0.02, 0.02]
    assert [row["val_images"] for row in ckpt["history"]] == [100, 100]  # every val image once, none twice
    assert abs(ckpt["best_acc"] - alone["best_acc"]) <= 0.02, (ckpt["history"], alone["history"])

    capsys.readouterr()
    assert main(["--resume", str(files_beside(two)["last"]), "--epochs", "3"]) == 0  # one process now
    resumed = load_checkpoint(files_beside(two)["last"])
    assert (resumed["epoch"], resumed["world_size"], resumed["lr_scale"]) == (3, 1, 1.0)
    assert resumed["history"][2]["lr"] == 0.01 and resumed["global_step"] == 2 * 19 + 38  # 300 images / 8
    best = load_checkpoint(two)
    onnx = tmp_path / "two.onnx"
    assert export_main(["--checkpoint", str(two), "--precision", "fp32", "--out", str(onnx)]) == 0
    capsys.readouterr()
    assert classify_main(["--model", str(onnx), "--image", str(digits / "val"), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 100
    assert sum(r["label"] == Path(r["source"]).parent.name for r in records) == \
        best["history"][best["best_epoch"] - 1]["val_correct"]


def test_files_of_runs_from_before_the_marks_are_still_ours(tiny, tmp_path):
    """Metrics JSON without ``format`` and PNGs without the ``Software`` mark, as earlier versions wrote them."""
    from export.errors import UsageError
    from export.train.files import RunFiles

    files = RunFiles.beside(tmp_path / "c.pt")
    metrics = json.loads(files_beside(tiny)["metrics"].read_text())
    del metrics["format"]
    files.metrics.write_text(json.dumps(metrics))
    Image.new("RGB", (8, 8)).save(files.curves)
    with pytest.raises(UsageError, match="c.curves.png exists and was not written by edge-train"):
        files.refuse_foreign()  # no checkpoint of the run beside it: a user's PNG
    shutil.copy(files_beside(tiny)["last"], files.last)
    files.refuse_foreign()
    files.grid.write_text("not a PNG")
    with pytest.raises(UsageError, match="c.val.png exists"):
        files.refuse_foreign()


# --- --init: start from the deployed model, its labels kept at their indices -------------------------------------

INIT_FLAGS = ["--mode", "features", "--augment", "none", "--batch-size", "8", "--workers", "0", "--lr", "0.01"]


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> Path:
    """Reviewed frames for ``tiny`` (digit0, digit1): digit0, and a new class ``adigit`` that sorts before both;
    no digit1 (a class the model knows, with no images here). One ImageFolder, split by edge-train."""
    root = write_digits(tmp_path_factory.mktemp("reviewed"), per_class=20, val_every=5, classes=3)
    data = root / "labelled"
    for part in ("train", "val"):
        for name, new in (("digit0", "digit0"), ("digit2", "adigit")):
            shutil.copytree(root / part / name, data / new, dirs_exist_ok=True)
    return data


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, tiny, reviewed) -> Dict:
    """``edge-train --init`` of ``tiny`` (as runs/deployed.pt) on ``reviewed``, then ``edge-export`` of the result."""
    import contextlib
    import io
    from export.cli import export_main

    runs = tmp_path_factory.mktemp("runs")
    deployed = Path(shutil.copy(tiny, runs / "deployed.pt"))
    out, onnx, printed = runs / "retrained.pt", runs / "retrained.onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--data", str(reviewed), "--init", str(deployed), "--epochs", "1", "--out", str(out)]
                    + INIT_FLAGS) == 0
        train_out = printed.getvalue()
        assert export_main(["--checkpoint", str(out), "--precision", "fp32", "--out", str(onnx)]) == 0
    return {"deployed": deployed, "out": out, "onnx": onnx, "train": train_out,
            "export": printed.getvalue()[len(train_out):]}


def test_init_keeps_the_models_label_order_and_backbone_and_records_where_it_started(retrained, tiny):
    from edge.model.swap import file_sha256

    ckpt, start = load_checkpoint(retrained["out"]), load_checkpoint(tiny)
    # adigit sorts first, but the deployed model's classes keep their indices; digit1 has no images, and stays
    assert start["classes"] == ["digit0", "digit1"]
    assert ckpt["classes"] == ["digit0", "digit1", "adigit"]
    assert ckpt["init"] == {"file": "deployed.pt", "sha256": file_sha256(retrained["deployed"]),
                            "classes": ["digit0", "digit1"]}
    assert (ckpt["arch"], ckpt["input_side"], ckpt["mean"], ckpt["std"]) == \
        (start["arch"], start["input_side"], start["mean"], start["std"])  # from the model, no --arch given
    head = "classifier.1."
    backbone = [k for k in start["model"] if not k.startswith(head)]
    assert backbone and all(torch.equal(ckpt["model"][k], start["model"][k]) for k in backbone)  # frozen: as loaded
    assert ckpt["model"][head + "weight"].shape[0] == 3
    assert f"started from {retrained['deployed']}; labels: 3 (2 as in deployed.pt, in the same order; added: adigit)" \
        in retrained["train"]


def test_init_copies_the_head_rows_by_label_not_by_index(tiny):
    from export.train.init_model import find_init, init_state
    from export.zoo import get_arch

    init, arch = find_init(tiny), get_arch("mobilenet_v2")
    old_weight, old_bias = init.ckpt["model"]["classifier.1.weight"], init.ckpt["model"]["classifier.1.bias"]
    classes = ["zebra", "digit1", "digit0"]  # another order than the model's: rows follow the names
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", len(classes))
    fresh = model.classifier[1].weight.detach().clone()
    model.load_state_dict(init_state(model, arch, init, classes))  # strict: the whole backbone fits
    weight, bias = model.classifier[1].weight, model.classifier[1].bias
    assert torch.equal(weight[1], old_weight[1]) and torch.equal(bias[1], old_bias[1])
    assert torch.equal(weight[2], old_weight[0]) and torch.equal(bias[2], old_bias[0])
    assert torch.equal(weight[0], fresh[0])  # a new class keeps the fresh initialisation, no copy of a row
    assert not any(torch.equal(weight[0], row) for row in old_weight)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in init.ckpt["model"].items()
               if not k.startswith("classifier.1."))


def test_resuming_an_init_run_keeps_its_order_and_its_start(retrained, tmp_path):
    last = Path(shutil.copy(retrained["out"].with_name("retrained.last.pt"), tmp_path / "r.last.pt"))
    assert main(["--resume", str(last), "--epochs", "2"]) == 0  # digit1 still has no images: its model had it
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 2 and ckpt["classes"] == ["digit0", "digit1", "adigit"]
    assert ckpt["init"] == load_checkpoint(retrained["out"])["init"]


def test_export_of_an_init_run_says_what_changed(retrained):
    assert "labels: 3 (2 as in deployed.pt, in the same order; added: adigit)" in retrained["export"]


def test_init_from_an_artifact_takes_its_source_checkpoint_beside_it(retrained, reviewed, tmp_path, capsys):
    from export.train.init_model import _is_torchscript, find_init

    init = find_init(retrained["onnx"])
    assert (init.path, init.classes) == (retrained["out"], ["digit0", "digit1", "adigit"])
    moved = tmp_path / "deployed" / "retrained.onnx"
    moved.parent.mkdir()
    shutil.copy(retrained["onnx"], moved)
    out = tmp_path / "runs" / "next.pt"
    code = main(["--data", str(reviewed), "--init", str(moved), "--out", str(out)])
    usage_error(code, capsys.readouterr().err, "edge-train", "its source checkpoint retrained.pt is not beside it",
                "--init PATH/retrained.pt")
    assert not out.parent.exists()
    script = tmp_path / "m.pt"  # a TorchScript .pt is an artifact, not a checkpoint
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))
    assert _is_torchscript(script) and not _is_torchscript(retrained["out"])


def test_class_order_fixes_the_indices_and_not_the_split(small, tmp_path):
    from export.errors import DataError
    from export.train.data import find_image_folders

    flat = tmp_path / "flat"
    for part in ("train", "val"):
        shutil.copytree(small / part, flat, dirs_exist_ok=True)
    order = ["digit1", "zebra"]
    for root in (small, flat):  # train/ + val/, and one folder split
        plain, ordered = find_image_folders(root), find_image_folders(root, class_order=order)
        assert ordered.classes == ["digit1", "zebra", "digit0"] and ordered.missing == ["zebra"]
        for samples in (ordered.train, ordered.val):
            assert samples and all(ordered.classes[target] == path.parent.name for path, target in samples)
        assert sorted(p for p, _ in ordered.val) == sorted(p for p, _ in plain.val)  # the same split
    shutil.rmtree(flat / "digit0")
    assert find_image_folders(flat, class_order=order).classes == ["digit1", "zebra"]  # the model has the others
    uneven = tmp_path / "uneven"
    shutil.copytree(small, uneven)
    shutil.rmtree(uneven / "val" / "digit0")
    with pytest.raises(DataError, match="only in train/: digit0"):
        find_image_folders(uneven, class_order=["digit0", "digit1"])
