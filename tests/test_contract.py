"""The artifact contract (edge/contract.py): spelled once, read and checked on the device, refused clearly.

Device side only (no torch): runs on JetPack 4.6's Python 3.6 as well.
"""

import re
from pathlib import Path

import pytest

from edge import contract
from edge.model.artifact import ArtifactError, spec_from_metadata
from edge.contract import Key

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("edge", "export") for p in (REPO / folder).rglob("*.py"))

# Each literal of the contract, as a pattern for its definition anywhere in the code of both sides.
LITERALS = {
    "the TorchScript extra file": r'"edge_classifier\.json"',
    "ImageNet mean": r"0\.485,\s*0\.456,\s*0\.406",
    "ImageNet std": r"0\.229,\s*0\.224,\s*0\.225",
    "the crop fraction": r"=\s*0\.875\b",
    "the image suffixes": r'"\.pbm"',
    "the stream schemes": r'"rtsp",\s*"rtsps"',
    "the format version": r"^FORMAT_VERSION\s*=",
    "the layout key": r'=\s*"layout"',
    "the interpolation key": r'=\s*"interpolation"',
}


@pytest.mark.parametrize("what", sorted(LITERALS))
def test_each_contract_literal_is_defined_once(what):
    found = [(p.relative_to(REPO), n) for p in SOURCES
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(LITERALS[what], line)]
    assert [str(p) for p, _ in found] == ["edge/contract.py"], found


def meta(**changes):
    base = {Key.FORMAT_VERSION: contract.FORMAT_VERSION, Key.LABELS: '["a", "b", "c"]', Key.NUM_CLASSES: "3",
            Key.INPUT_SIDE: "224", Key.RESIZE_SIDE: "256", Key.INPUT: "uint8", Key.LAYOUT: "NHWC",
            Key.INTERPOLATION: "bilinear", Key.PRECISION: "fp16", Key.ARCH: "resnet18", Key.SOURCE: "none"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def spec(**changes):
    return spec_from_metadata(meta(**changes), input_shape=[None, 224, 224, 3], input_dtype="uint8", num_classes=3)


def test_every_key_the_device_needs_is_read():
    """The provenance keys (source, exporter) are for people and other tools; the device reads the rest."""
    s = spec()
    assert (s.labels, s.input_side, s.resize_side, s.input_kind, s.interpolation, s.precision, s.arch) == (
        ("a", "b", "c"), 224, 256, "uint8", "bilinear", "fp16", "resnet18")
    assert spec(**{Key.RESIZE_SIDE: None}).resize_side == contract.resize_for(224) == 256


@pytest.mark.parametrize("version", ["1", "1.0", "1.7"])
def test_older_and_newer_minor_formats_load(version):
    assert spec(**{Key.FORMAT_VERSION: version}).input_side == 224


@pytest.mark.parametrize("changes, message", [
    ({Key.FORMAT_VERSION: "2.0"}, "artifact format 2.0"),
    ({Key.FORMAT_VERSION: "one"}, "not MAJOR.MINOR"),
    ({Key.LAYOUT: "NCHW"}, "layout NCHW"),
    ({Key.INTERPOLATION: "nearest"}, "'nearest' resizing"),
    ({Key.PRECISION: "int8"}, "unknown precision"),
    ({Key.INPUT: "rgb"}, "unknown input kind"),
    ({Key.NUM_CLASSES: "4"}, "num_classes 4"),
    ({Key.INPUT_SIDE: "0"}, "bad sizes: input 0"),
    ({Key.INPUT_SIDE: "-1"}, "bad sizes: input -1"),
    ({Key.INPUT_SIDE: "60000"}, "bad sizes: input 60000"),
    ({Key.INPUT_SIDE: "abc"}, "unreadable"),
    ({Key.STD: "[0, 0.2, 0.2]"}, "std must be positive finite numbers"),
    ({Key.MEAN: "[0.5, 0.5]"}, "mean must hold 3 values, not 2"),
    ({Key.MEAN: '"abc"'}, "mean must be a list of 3 numbers, not 'abc'"),
    ({Key.MEAN: "5"}, "mean must be a list of 3 numbers, not 5"),
    ({Key.MEAN: '{"a": 1, "b": 2, "c": 3}'}, "mean must be a list of 3 numbers"),
    ({Key.STD: "[true, 1, 1]"}, "std must be a list of 3 numbers"),
    ({Key.TARGET: "deepstream"}, "for DeepStream (nvinfer)"),
    ({Key.TARGET: "jetson-inference"}, "for jetson-inference"),
])
def test_metadata_that_breaks_the_contract_is_refused_in_one_line(changes, message):
    with pytest.raises(ArtifactError) as caught:
        spec(**changes)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text, kind, index", [
    ("csi://1", "csi", 1), ("/dev/video2", "camera", 2), ("3", "camera", 3), ("clip.mp4", "file", None),
    ("rtsp://cam/stream", "stream", None), ("HTTP://cam/mjpg", "stream", None),
    ("v4l2src ! videoconvert ! appsink", "gstreamer", None),
])
def test_source_grammar(text, kind, index):
    assert contract.source_kind(text) == (kind, index)


def test_an_unknown_scheme_is_refused():
    with pytest.raises(contract.ContractError, match="unknown source scheme 'ftp'"):
        contract.source_kind("ftp://host/clip.mp4")


@pytest.mark.parametrize("sides", [(0, 0), (-1, 37), (60000, 68571), (224, 100), (224, 10 ** 8), ("224", 256),
                                   (True, 1), (224.0, 256)])
def test_sides_outside_the_contract_are_refused(sides):
    with pytest.raises(contract.ContractError):
        contract.check_sides(*sides)


def test_the_contract_checks_pass_what_torchvision_uses():
    assert contract.check_sides(299, 342) == (299, 342)
    assert contract.check_mean_std(list(contract.IMAGENET_MEAN), contract.IMAGENET_STD) == (
        contract.IMAGENET_MEAN, contract.IMAGENET_STD)


def test_a_hostile_value_is_shown_short():
    with pytest.raises(contract.ContractError) as caught:
        contract.check_mean_std("x" * 10 ** 6, [1, 1, 1])
    assert len(str(caught.value)) < 100
