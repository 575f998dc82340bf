"""The artifact contract as data, in one place: what edge-export writes and edge-classify reads.

Both sides import this module (the host writes with it, the device reads with it), so every metadata
key, default and suffix is spelled once here. Standard library only, Python 3.6-clean: it runs on a
Jetson Nano as it is::

    from edge import contract
    meta[contract.Key.INPUT_SIDE]                       # "input_side"
    contract.check_format_version(meta)                 # ContractError for an artifact from a newer major format
    contract.layout_for("uint8")                        # "NHWC"
    contract.source_kind("csi://0")                    # SourceKind(kind='csi', index=0)
    contract.check_sides(224, 256)                      # ContractError for 0, -1, 60000, "224", True...
    contract.check_mean_std([0.5] * 3, [0.2] * 3)       # ContractError for std 0, 2 values, NaN, strings
    contract.refuse_other_runtime(meta)                 # ContractError for a file another runtime runs

An artifact's metadata is a flat ``str -> str`` dict (ONNX ``metadata_props``; TorchScript
``_extra_files[TORCHSCRIPT_METADATA_FILE]`` holding it as JSON). Every key written is read and checked
on the device: ``edge.model.artifact.spec_from_metadata`` reads the model's keys through the small
``read_*`` functions below, ``edge.model.artifact`` (and its value checks) builds the ``ModelSpec``.
"""

import json
import math
import numbers
import re
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple

from edge.errors import EdgeError

# Major.minor. A device refuses a newer major (the meaning of a key changed); a newer minor only adds keys
# an older device may ignore. Artifacts written before the minor existed say "1".
FORMAT_VERSION = "1.0"
SUPPORTED_MAJOR = 1

TORCHSCRIPT_METADATA_FILE = "edge_classifier.json"  # the _extra_files entry of a .ts artifact
ONNX_INPUT_NAME = "image"
ONNX_OUTPUT_NAME = "logits"


class Key:
    """The metadata keys, every value a string."""

    FORMAT_VERSION = "format_version"
    LABELS = "labels"  # JSON list of class names
    NUM_CLASSES = "num_classes"
    INPUT_SIDE = "input_side"  # the square the model takes
    RESIZE_SIDE = "resize_side"  # the shorter side is resized to this before the center crop
    MEAN = "mean"  # JSON list of 3 floats
    STD = "std"
    INTERPOLATION = "interpolation"
    INPUT = "input"  # one of INPUT_KINDS
    LAYOUT = "layout"  # NHWC for uint8 input, NCHW for float
    PRECISION = "precision"
    ARCH = "arch"
    EXPORTER = "exporter"  # which tools wrote it
    SOURCE = "source"  # which weights
    TARGET = "target"  # files for other runtimes (RUNTIMES_ELSEWHERE) name theirs: not edge-classify artifacts


INPUT_UINT8, INPUT_FLOAT = "uint8", "float"
INPUT_KINDS = (INPUT_UINT8, INPUT_FLOAT)
LAYOUTS = {INPUT_UINT8: "NHWC", INPUT_FLOAT: "NCHW"}
PRECISIONS = ("fp32", "fp16")
# What edge.model.preprocess reproduces (torchvision's Resize with PIL bilinear + antialias); nothing else is
# implemented on the device, so an artifact asking for another filter is refused rather than misfed.
INTERPOLATIONS = ("bilinear",)
DEFAULT_INTERPOLATION = "bilinear"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # torchvision's eval recipe: resize = side / 0.875 (224 -> 256, 299 -> 342)
DEFAULT_INPUT_SIDE = 224
MAX_INPUT_SIDE = 4096  # beyond any classifier; a bigger number is damage, not a model (60000 is a 10 GB input)
MAX_RESIZE_FACTOR = 4  # resize_side / input_side: torchvision's recipes use 1.14; 1e8 would exhaust memory

# edge-export --target writes files for other runtimes beside the artifacts; their ``target`` key names the
# runtime, whose own preprocessing (and Softmax) is in the graph, so edge-classify must not run them.
RUNTIMES_ELSEWHERE = {
    "jetson-inference": "jetson-inference (imagenet / imagenet.py)",
    "deepstream": "DeepStream (nvinfer)",
}

# What edge-classify --image reads, what edge-train learns from and what edge-export verifies on: one list,
# so every training or verification image can be classified on the device too.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"})

# The --source grammar (edge.sources.capture opens it, edge.service.cli writes a unit for it).
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
CSI_PATTERN = re.compile(r"csi://(\d+)")
V4L2_PATTERN = re.compile(r"/dev/video(\d+)")


class ContractError(EdgeError, ValueError):
    """Metadata that breaks the contract (a newer format, an unknown layout); the message is one line."""


def resize_for(side: int) -> int:
    """The resize side that goes with a crop of ``side`` (224 -> 256, 299 -> 342, 32 -> 37)."""
    return int(round(side / CROP_FRACTION))


def layout_for(input_kind: str) -> str:
    """The tensor layout of an input kind: NHWC for uint8 pixels, NCHW for normalised floats."""
    return LAYOUTS[input_kind]


def check_format_version(meta: Mapping[str, str]) -> Tuple[int, int]:
    """``(major, minor)`` of an artifact's format; ContractError for a newer major or an unreadable one.

    An artifact without the key (an ONNX file from elsewhere) is taken as the current format.
    """
    text = meta.get(Key.FORMAT_VERSION, FORMAT_VERSION)
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?", str(text).strip())
    if not match:
        raise ContractError("the model's format_version {!r} is not MAJOR.MINOR".format(text))
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    if major > SUPPORTED_MAJOR:
        raise ContractError("the model was written in artifact format {} and this edge-classifier reads format {}: "
                            "upgrade edge-classifier on this device, or export with the version here"
                            .format(text, SUPPORTED_MAJOR))
    return major, minor


def read_input_kind(meta: Mapping[str, str], graph_dtype: str) -> str:
    """``input`` and ``layout`` read and checked against each other; the graph's dtype when absent."""
    kind = meta.get(Key.INPUT) or (INPUT_UINT8 if graph_dtype == "uint8" else INPUT_FLOAT)
    if kind not in INPUT_KINDS:
        raise ContractError("unknown input kind {!r} in the model's metadata (expected {})"
                            .format(kind, " or ".join(INPUT_KINDS)))
    layout = meta.get(Key.LAYOUT)
    if layout is not None and layout != layout_for(kind):
        raise ContractError("the model's metadata says input {} with layout {}, but {} input is {}"
                            .format(kind, layout, kind, layout_for(kind)))
    return kind


def read_interpolation(meta: Mapping[str, str]) -> str:
    """``interpolation``, which must be one the device implements."""
    value = meta.get(Key.INTERPOLATION, DEFAULT_INTERPOLATION)
    if value not in INTERPOLATIONS:
        raise ContractError("the model asks for {!r} resizing; the device implements {}"
                            .format(value, ", ".join(INTERPOLATIONS)))
    return value


def read_precision(meta: Mapping[str, str], graph_dtype: str) -> str:
    """``precision`` (fp32 or fp16); the graph's input dtype decides for a file without it."""
    value = meta.get(Key.PRECISION) or ("fp16" if "16" in graph_dtype else "fp32")
    if value not in PRECISIONS:
        raise ContractError("unknown precision {!r} in the model's metadata (expected {})"
                            .format(value, " or ".join(PRECISIONS)))
    return value


def read_floats(meta: Mapping[str, str], key: str, default: Tuple[float, float, float]) -> Tuple[float, ...]:
    """A JSON list of 3 numbers (``mean``, ``std``), or ``default`` when the key is absent."""
    text = meta.get(key)
    if text is None:
        return default
    return three_numbers(key, json.loads(text))


def three_numbers(name: str, values: Any) -> Tuple[float, float, float]:
    """``values`` as 3 floats; ContractError for anything else (a string, 2 values, a dict, a bool)."""
    if not isinstance(values, (list, tuple)):
        raise ContractError("{} must be a list of 3 numbers, not {}".format(name, _shown(values)))
    if len(values) != 3:
        raise ContractError("{} must hold 3 values, not {}".format(name, len(values)))
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise ContractError("{} must be a list of 3 numbers, not {}".format(name, _shown(values)))
    return float(values[0]), float(values[1]), float(values[2])


def check_mean_std(mean: Any, std: Any) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    """The normalisation every artifact bakes in: 3 finite means, 3 positive finite stds (std 0 divides by 0)."""
    mean, std = three_numbers("mean", mean), three_numbers("std", std)
    if not all(math.isfinite(m) for m in mean):
        raise ContractError("mean must be finite numbers, not {}".format(list(mean)))
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise ContractError("std must be positive finite numbers, not {}".format(list(std)))
    return mean, std


def check_sides(input_side: Any, resize_side: Any) -> Tuple[int, int]:
    """The model's square and the resize before the crop: whole numbers, 0 < input <= MAX_INPUT_SIDE and
    input <= resize <= MAX_RESIZE_FACTOR x input (anything else crashes, hangs or exhausts memory)."""
    for name, value in (("input side", input_side), ("resize side", resize_side)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ContractError("{} must be a whole number, not {}".format(name, _shown(value)))
    if not (0 < input_side <= MAX_INPUT_SIDE and input_side <= resize_side <= MAX_RESIZE_FACTOR * input_side):
        raise ContractError("bad sizes: input {}, resize {} (expected 0 < input <= {} and input <= resize <= {} x "
                            "input)".format(input_side, resize_side, MAX_INPUT_SIDE, MAX_RESIZE_FACTOR))
    return int(input_side), int(resize_side)


def refuse_other_runtime(meta: Mapping[str, str], name: str = "the model") -> None:
    """ContractError for a file edge-export wrote for another runtime (``m.deepstream.onnx``): its graph expects
    that runtime's preprocessing and ends in a Softmax, so edge-classify would misread every frame."""
    target = meta.get(Key.TARGET, "")
    if target in RUNTIMES_ELSEWHERE:
        raise ContractError("{} is edge-export's {} file, for {}; export a .onnx or .ts (--target onnxruntime, "
                            "tensorrt or torchscript) for edge-classify"
                            .format(name, target, RUNTIMES_ELSEWHERE[target]))


def _shown(value: Any, limit: int = 40) -> str:
    """A hostile value in an error line: its repr, cut short (a megabyte string must not fill the screen)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_label_list(meta: Mapping[str, str]) -> Optional[Tuple[str, ...]]:
    """The ``labels`` JSON list, or None when the model carries none."""
    if Key.LABELS not in meta:
        return None
    labels = json.loads(meta[Key.LABELS])
    if not isinstance(labels, list):
        raise ValueError("labels must be a JSON list")
    if Key.NUM_CLASSES in meta and int(meta[Key.NUM_CLASSES]) != len(labels):
        raise ValueError("{} labels but num_classes {}".format(len(labels), meta[Key.NUM_CLASSES]))
    return tuple(str(label) for label in labels)


def encode_floats(values: Sequence[float]) -> str:
    return json.dumps([float(v) for v in values])


def encode_labels(labels: Sequence[str]) -> str:
    return json.dumps(list(labels))


class SourceKind(NamedTuple):
    """What a ``--source`` (or ``--camera``) names: ``kind`` and, for cameras, the device number."""

    kind: str  # "csi", "camera", "gstreamer", "stream" or "file"
    index: Optional[int] = None


def source_kind(text: str) -> SourceKind:
    """Classify a ``--source`` string by the grammar: csi://N, /dev/videoN or N, a pipeline (``!``),
    a stream URL, else a video file. ContractError for an unknown ``scheme://``."""
    text = text.strip()
    csi = CSI_PATTERN.fullmatch(text)
    if csi:
        return SourceKind("csi", int(csi.group(1)))
    v4l2 = V4L2_PATTERN.fullmatch(text)
    if v4l2 or text.isdigit():
        return SourceKind("camera", int(v4l2.group(1) if v4l2 else text))
    if "!" in text:
        return SourceKind("gstreamer")
    scheme = source_scheme(text)
    if scheme in STREAM_SCHEMES:
        return SourceKind("stream")
    if scheme:
        raise ContractError("{}: unknown source scheme {!r} (use csi://N, /dev/videoN, a video file, {}... or a "
                            "GStreamer pipeline)".format(text, scheme, ", ".join(s + "://" for s in STREAM_SCHEMES[:5])))
    return SourceKind("file")


def source_scheme(text: str) -> str:
    """The lower-case ``scheme`` of ``scheme://...``, or ``""``."""
    return text.split("://", 1)[0].lower() if "://" in text else ""


# How a frame becomes the model's square (edge-classify --crop): a setting of the run, never an artifact key.
# center: Resize(resize_side) + CenterCrop(input_side), torchvision's eval transform (the default); full: the
# whole frame squeezed to the square; letterbox: the whole frame fitted inside it, the rest the mean colour.
CROP_MODES = ("center", "full", "letterbox")
DEFAULT_CROP = "center"
# Frames in one run of a model with a dynamic batch axis (several sources; --max-batch is checked against it).
MAX_BATCH = 64


def resized_size(height: int, width: int, resize: int) -> Tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes ``resize``, the longer keeps the aspect ratio.

    ``(height, width)`` after it: what the device's preprocessing resamples to, and what a Jetson's
    video hardware scales a CSI camera's frames to (``--csi-resize``)."""
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)
