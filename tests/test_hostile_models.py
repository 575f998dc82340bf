"""edge-classify against hostile models and the values they give: code in a .ts file, custom ONNX
domains, scores that are not numbers, scores near a threshold, labels and names that are not UTF-8.

Each case runs the command in process: one line on stderr, the documented exit code, and nothing
that is not JSON on stdout with ``--json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
import onnx
import pytest
import torch
from conftest import write_photo_video
from torch import nn

from edge.cli import main
from edge.sinks.console import format_line, percent
from export.exporter import export_artifact
from export.metadata import artifact_metadata

LABELS = ["cat", "cup", "rocket"]
SIDE, RESIZE = 32, 37


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def photo(photos) -> np.ndarray:
    return np.ascontiguousarray(photos["chelsea"][::2, ::2, ::-1])


@pytest.fixture()
def image(photo, tmp_path) -> Path:
    path = tmp_path / "cat.jpg"
    cv2.imwrite(str(path), photo)
    return path


def save_script(module: nn.Module, path: Path, labels=LABELS) -> Path:
    meta = artifact_metadata(arch="tiny", labels=labels, input_side=SIDE, resize_side=RESIZE, precision="fp32",
                             input_kind="uint8", source="none", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    torch.jit.save(torch.jit.script(module), str(path), _extra_files={"edge_classifier.json": json.dumps(meta)})
    return path


def export(module: nn.Module, path: Path, labels=LABELS) -> Path:
    return export_artifact(module.eval(), path, arch="tiny", labels=labels, input_side=SIDE, resize_side=RESIZE)


# ------------------------------------------------------------------------------ a .ts file is code

class WritesAFile(nn.Module):
    """A classifier-shaped forward that also overwrites a file through a shared storage."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        stolen.fill_(35)  # "#"
        return x.float().mean((1, 2)) + stolen.float().sum() * 0


class WritesOnLoad(nn.Module):
    """A module whose ``__setstate__`` (run by torch.jit.load itself) writes a file."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        stolen = torch.from_file(state[0], shared=True, size=8, dtype=torch.uint8)
        stolen.fill_(35)
        self.target = state[0] + str(int(stolen.sum()))
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((1, 2))


@pytest.mark.parametrize("module,message", [(WritesAFile, "aten::from_file"), (WritesOnLoad, "__setstate__")])
def test_a_torchscript_model_that_writes_files_is_refused_before_it_runs(module, message, image, tmp_path, capsys):
    bashrc = tmp_path / "home" / ".bashrc"
    bashrc.parent.mkdir()
    bashrc.write_text("export PATH=/usr/bin\n")
    model = save_script(module(str(bashrc)), tmp_path / "evil.ts")
    bashrc.write_text("export PATH=/usr/bin\n")  # saving WritesOnLoad ran nothing, but be sure
    code, out, err = run(capsys, "--model", model, "--image", image)
    assert (code, out) == (2, "")
    assert message in one_line(err) and "refused" in err
    assert bashrc.read_text() == "export PATH=/usr/bin\n"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_an_exported_torchscript_classifier_passes_the_operator_check(image, tmp_path, capsys):
    torch.manual_seed(0)
    model = export(Tiny(), tmp_path / "tiny.ts")
    code, out, err = run(capsys, "--model", model, "--image", image, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["label"] in LABELS


@pytest.mark.parametrize("changes", [{"input_side": "abc"}, {"num_classes": "x"}, "a list, not a table"])
def test_damaged_torchscript_metadata_is_one_line_and_exit_2(changes, image, tmp_path, capsys):
    """The TorchScript backend reads sizes from the metadata itself (its graph does not say them)."""
    from edge.contract import TORCHSCRIPT_METADATA_FILE

    torch.manual_seed(0)
    model = export(Tiny(), tmp_path / "tiny.ts")
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    module = torch.jit.load(str(model), _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_METADATA_FILE])
    damaged = ["a", "list"] if isinstance(changes, str) else dict(meta, **changes)
    torch.jit.save(module, str(model), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(damaged)})
    code, out, err = run(capsys, "--model", model, "--image", image)
    assert (code, out) == (2, "")
    line = one_line(err)
    assert "tiny.ts" in line and "unexpected" not in line, line


@pytest.mark.parametrize("domain", ["com.example.custom", "com.microsoft.extensions"])
def test_an_onnx_model_with_a_custom_operator_domain_is_refused(domain, image, tmp_path, capsys):
    torch.manual_seed(0)
    model = export(Tiny(), tmp_path / "tiny.onnx")
    proto = onnx.load(str(model))
    proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    onnx.save(proto, str(model))
    code, out, err = run(capsys, "--model", model, "--image", image)
    assert (code, out) == (2, "")
    assert f"custom domain {domain!r}" in one_line(err)


# ------------------------------------------------------------------------------ values that are values

class Overflows(nn.Module):
    """Finite on the black load-time test frame, infinite (NaN after softmax) on a real photo."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = x.mean((1, 2, 3))  # normalised: about -2 for black, about 0 for a photo
        return torch.exp(100 * (brightness + 1)).unsqueeze(1) * torch.tensor([1.0, 2.0, 3.0])


class AlwaysNaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.mean((2, 3)) - 100)


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory) -> Path:
    return export(Overflows(), tmp_path_factory.mktemp("overflow") / "overflow.onnx")


def test_scores_that_are_not_numbers_fail_the_image_and_never_reach_json(overflowing, image, tmp_path, capsys):
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((40, 40, 3), np.uint8))
    code, out, err = run(capsys, "--model", overflowing, "--image", black, image)
    assert code == 1
    assert "cat.jpg" in one_line(err) and "not finite" in err
    assert out.startswith(f"{black}: ") and len(out.splitlines()) == 1 and "nan%" not in out
    code, out, err = run(capsys, "--model", overflowing, "--image", black, image, "--json")
    assert code == 1 and "not finite" in one_line(err)
    records = [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) for line in out.splitlines()]
    assert [r["source"] for r in records] == [str(black)] and math.isfinite(records[0]["score"])


def test_a_stream_whose_frames_all_fail_does_not_exit_0(overflowing, photos, tmp_path, capsys, caplog):
    video = write_photo_video(tmp_path / "v.avi", photos, ["chelsea"], 3)
    code, out, err = run(capsys, "--model", overflowing, "--source", video, "--json")
    assert code == 1 and out == ""
    assert "none of its 3 frames could be classified" in one_line(err)
    assert caplog.text.count("not finite") == 3  # each failed frame is reported (a warning line)


def test_a_model_that_gives_nan_on_the_test_input_is_refused_at_load(image, tmp_path, capsys):
    model = export(AlwaysNaN(), tmp_path / "nan.onnx")
    code, out, err = run(capsys, "--model", model, "--image", image)
    assert (code, out) == (2, "")
    assert "fails on a test input" in one_line(err) and "not finite" in err


# ------------------------------------------------------------------------------ scores near a threshold

class Fixed(nn.Module):
    """Logits that give ``top`` as the first class's softmax probability, whatever the image."""

    def __init__(self, top: float) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor([math.log(2 * top / (1 - top)), 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2, 3)).unsqueeze(1) * 0 + self.logits


def test_a_score_just_below_the_threshold_is_never_shown_as_reaching_it(photos, tmp_path, capsys):
    model = export(Fixed(0.89996), tmp_path / "fixed.onnx")
    video = write_photo_video(tmp_path / "v.avi", photos, ["chelsea"], 2)
    code, out, err = run(capsys, "--model", model, "--source", video, "--threshold", "0.9")
    assert code == 0, err
    assert out.startswith(f"{video}: unknown (89.9%)"), out
    code, out, _ = run(capsys, "--model", model, "--source", video, "--threshold", "0.9", "--json")
    assert {json.loads(line)["score"] < 0.9 for line in out.splitlines()} == {True}


@pytest.mark.parametrize("score,shown", [(0.89996, "89.9%"), (0.9, "90.0%"), (0.29, "29.0%"), (0.999999, "99.9%"),
                                         (1.0, "100.0%"), (1e-12, "0.0%")])
def test_percentages_are_cut_not_rounded(score, shown):
    assert percent(score) == shown


# ------------------------------------------------------------------------------ labels and names

def with_labels(model: Path, out: Path, labels) -> Path:
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(labels)  # ASCII JSON: the lone surrogate travels as \ud800
    onnx.save(proto, str(out))
    return out


@pytest.fixture(scope="module")
def surrogate_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("surrogate")
    return with_labels(export(Fixed(0.8), folder / "m.onnx"), folder / "lone.onnx", ["ca\ud800t", "cup", "rocket"])


def test_a_lone_surrogate_label_is_shown_escaped_for_an_image(surrogate_model, image, capsys):
    code, out, err = run(capsys, "--model", surrogate_model, "--image", image, "--topk", "2")
    assert (code, err) == (0, "")
    assert out.startswith(f"{image}: ca\\ud800t (80.0%)")
    code, out, err = run(capsys, "--model", surrogate_model, "--image", image, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["label"] == "ca\ud800t"


def test_a_lone_surrogate_label_does_not_end_a_stream(surrogate_model, photos, tmp_path, capsys):
    video = write_photo_video(tmp_path / "v.avi", photos, ["chelsea"], 3)
    for flags in ([], ["--json"]):
        code, out, err = run(capsys, "--model", surrogate_model, "--source", video, *flags)
        assert code == 0, err
        assert "ca\\ud800t" in out
    assert [json.loads(line)["label"] for line in out.splitlines()] == ["ca\ud800t"] * 3


def test_a_file_name_that_is_not_utf8_is_classified_and_shown_escaped(surrogate_model, photo, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: a surrogate in Python's str
    cv2.imwrite(str(folder / "good.jpg"), photo)
    (folder / name).write_bytes((folder / "good.jpg").read_bytes())
    code, out, err = run(capsys, "--model", surrogate_model, "--image", folder)
    assert (code, err) == (0, "")
    assert f"{folder}/caf\\udce9.jpg: " in out
    code, out, err = run(capsys, "--model", surrogate_model, "--image", folder, "--json")
    assert (code, err) == (0, "")
    sources = [json.loads(line)["source"] for line in out.splitlines()]
    assert os.fsencode(sources[0]) == os.fsencode(str(folder)) + b"/caf\xe9.jpg"


def test_format_line_escapes_surrogates():
    from edge.model.classify import Prediction, TopK

    top = (TopK("ca\ud800t", 0, 0.5),)
    line = format_line("x\udcff.jpg", Prediction("ca\ud800t", 0, 0.5, top, np.zeros(1)), topk=1)
    assert line == "x\\udcff.jpg: ca\\ud800t (50.0%)"
    line.encode("utf-8")
