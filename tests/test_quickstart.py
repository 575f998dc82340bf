"""edge-quickstart: what it tells the user is true, it reruns in its own folder, and it never touches a foreign one.

The full run (slow) uses two digit classes of 12 images and one epoch: the numbers are not the point there,
their truth is. The refusals and argument checks run no model (fast).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from export.quickstart import MANIFEST, claim_workdir, main, UsageError
from edge.cli import main as classify_main

SMALL = ["--classes", "2", "--per-class", "12", "--epochs", "1"]


def accuracy_line(out: str) -> tuple:
    match = re.search(r"held-out top-1 accuracy \(edge-classify, ONNX\): [\d.]+% \((\d+)/(\d+)\)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


@pytest.mark.slow
def test_runs_the_whole_path_and_tells_the_truth(tmp_path, capsys):
    workdir = tmp_path / "qs"
    assert main(["--workdir", str(workdir)] + SMALL) == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith("edge-quickstart: [")] == [
        f"edge-quickstart: [{n}/4] {text}" for n, text in [
            (1, f"writing 2 classes of scikit-learn's digits to {workdir / 'data'}"),
            (2, "training resnet18 from scratch for 1 epoch (edge-train)"),
            (3, f"exporting {workdir / 'digits.onnx'}, checked against the eager model (edge-export)"),
            (4, f"classifying the held-out images (edge-classify --json > {workdir / 'classify.jsonl'})")]]
    for name in ("digits.pt", "digits.onnx", "classify.jsonl", "digits.metrics.json", MANIFEST):
        assert (workdir / name).is_file(), name
    assert len(list((workdir / "data" / "train").rglob("*.png"))) == 18
    held_out = sorted((workdir / "data" / "val").rglob("*.png"))
    assert len(held_out) == 6 and f"wrote {len(json.loads((workdir / MANIFEST).read_text())['written'])} files" in out

    # The accuracy told is what edge-classify answers, run again here on the model it names.
    assert classify_main(["--model", str(workdir / "digits.onnx"), "--image", str(workdir / "data" / "val"),
                          "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 6
    assert accuracy_line(out) == (sum(r["label"] == Path(r["source"]).parent.name for r in records), 6)
    saved = [json.loads(line) for line in (workdir / "classify.jsonl").read_text().splitlines()]
    assert [(r["source"], r["label"]) for r in saved] == [(r["source"], r["label"]) for r in records]
    metrics = json.loads((workdir / "digits.metrics.json").read_text())
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert f"(edge-train): {best['val_correct'] / 6:.1%} ({best['val_correct']}/6)" in out
    assert f"edge-classify --model {workdir / 'digits.onnx'} --image" in out

    # A second run into the folder it wrote works; a file put there since is never touched.
    assert main(["--workdir", str(workdir)] + SMALL) == 0
    assert accuracy_line(capsys.readouterr().out)[1] == 6
    notes = workdir / "notes.txt"
    notes.write_text("mine")
    assert main(["--workdir", str(workdir)] + SMALL) == 2
    err = capsys.readouterr().err
    assert err == f"edge-quickstart: --workdir {workdir} holds {notes}, which edge-quickstart did not write; " \
                  "move it away or choose another folder\n"
    assert notes.read_text() == "mine" and (workdir / "digits.onnx").is_file()


def test_refuses_a_non_empty_folder_it_did_not_create(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "cat.png").write_bytes(b"not ours")
    (folder / "digits.onnx").write_bytes(b"someone's model")
    assert main(["--workdir", str(folder)] + SMALL) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err == f"edge-quickstart: --workdir {folder} is not empty and edge-quickstart did not create it; " \
                  "choose a new or empty folder\n"
    assert sorted(p.name for p in folder.rglob("*")) == ["cat.png", "data", "digits.onnx"]
    assert (folder / "digits.onnx").read_bytes() == b"someone's model"


def test_a_file_as_workdir_is_refused(tmp_path, capsys):
    path = tmp_path / "f"
    path.write_text("x")
    assert main(["--workdir", str(path)]) == 2
    assert capsys.readouterr().err == f"edge-quickstart: --workdir {path} is a file; choose a folder\n"
    assert path.read_text() == "x"


def test_claiming_its_own_folder_removes_only_what_it_wrote(tmp_path):
    workdir = tmp_path / "qs"
    (workdir / "data" / "val").mkdir(parents=True)
    (workdir / "data" / "val" / "a.png").write_bytes(b"ours")
    (workdir / "digits.onnx").write_bytes(b"ours")
    (workdir / MANIFEST).write_text(json.dumps({"written": ["data/val/a.png", "digits.onnx", "../outside.txt"]}))
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    claim_workdir(workdir)
    assert sorted(p.name for p in workdir.rglob("*")) == [MANIFEST] and outside.read_text() == "not ours"
    assert json.loads((workdir / MANIFEST).read_text()) == {"written": []}
    (workdir / "mine.txt").write_text("mine")
    with pytest.raises(UsageError, match="mine.txt, which edge-quickstart did not write"):
        claim_workdir(workdir)
    assert (workdir / "mine.txt").read_text() == "mine"


def test_version_and_help(capsys):
    import edge

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"edge-quickstart {edge.__version__}"
    assert main(["--help"]) == 0
    assert "--workdir DIR" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--classes", "1"], "--classes 1: there are 10 digits; choose 2 to 10"),
    (["--classes", "11"], "--classes 11: there are 10 digits; choose 2 to 10"),
    (["--per-class", "7"], "--per-class 7: choose 8 to 174"),
    (["--per-class", "175"], "--per-class 175: choose 8 to 174"),
    (["--arch", "resnet9000"], "--arch resnet9000: choose one of mobilenet_v2, resnet18"),
    (["--epochs", "0"], "must be at least 1"),
    (["--classes", "two"], "invalid positive_int value"),
])
def test_bad_arguments_give_one_line_and_exit_2_and_write_nothing(argv, message, tmp_path, capsys):
    workdir = tmp_path / "qs"
    assert main(["--workdir", str(workdir)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    if not err.startswith("usage:"):  # argparse prints its usage first
        assert err.startswith("edge-quickstart: ") and err.count("\n") == 1, err
    assert not workdir.exists()
