"""Export targets: one model, one file per runtime that will run it, from one ``edge-export`` call.

Each target is one row of ``TARGETS`` (Ultralytics-style): its file suffix, what the runtime feeds
the network (and so what the graph must do with it), how the runtime resizes a frame, whether the
graph ends in a Softmax, the tensor names, and the side files and command lines it needs::

    edge-export --weights pretrained --target all --out build/mobilenet_v2.onnx
    # build/mobilenet_v2.onnx             onnxruntime: edge-classify's self-describing artifact
    # build/mobilenet_v2.jetson.onnx      jetson-inference imagenet (+ .jetson.labels.txt)
    # build/mobilenet_v2.deepstream.onnx  DeepStream nvinfer (+ .deepstream.labels.txt, .deepstream.nvinfer.txt)
    # build/mobilenet_v2.tensorrt.onnx    trtexec / TensorRT Python API, and edge-classify too

    targets = resolve_outputs([Path("m.onnx")], ["all"])      # [(Path, Target), ...]

The runtime's feed is described as an affine map of the 0..255 RGB pixel ``p``, per channel:
``feed = p * a + b`` (``runtime_feed``). The graph undoes it and applies the model's own mean/std
(``FeedToModel``), so the same eager model serves every target exactly, whatever the runtime does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import UsageError
from .zoo import IMAGENET_MEAN, IMAGENET_STD

ALL = "all"
TRT_OPSET = 13  # the newest opset JetPack 4.6's TensorRT 8.2 parses
Affine = Tuple[Tuple[float, float, float], Tuple[float, float, float]]  # (a, b): feed = p * a + b per channel


class TargetError(UsageError):
    """A --target / --out combination (or labels) a target cannot honour; the message is one line for the user."""


def normalised_feed(mean: Sequence[float], std: Sequence[float]) -> Affine:
    """``(p / 255 - mean) / std``: what torchvision's ``ToTensor`` + ``Normalize`` give."""
    return (tuple(1.0 / (255.0 * s) for s in std), tuple(-m / s for m, s in zip(mean, std)))  # type: ignore[return-value]


def _jetson_inference_feed(mean: Sequence[float], std: Sequence[float]) -> Affine:
    # imageNet.cpp normalises ONNX inputs with fixed ImageNet statistics, whatever the model was trained on.
    del mean, std
    return normalised_feed(IMAGENET_MEAN, IMAGENET_STD)


def _pixels_0_255(mean: Sequence[float], std: Sequence[float]) -> Affine:
    # nvinfer computes net-scale-factor * (p - offsets[c]); with 1 and 0;0;0 the network gets p itself,
    # so the per-channel std (which one scalar scale cannot express) goes inside the graph.
    del mean, std
    return ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


@dataclass(frozen=True)
class Target:
    """One runtime's view of the model.

    ``self_describing`` targets are edge-classify artifacts (metadata inside, verified by
    ``export.verify``); the others get their own graph (``FeedToModel``), side files and checks.
    ``feed`` is None for the uint8 NHWC artifact (the graph takes pixels as they are).
    ``preprocessing`` names how the runtime makes the network-sized frame: ``crop`` is edge-classify's own
    (``export.verify.edge_device_path``), the others are in ``export.target_verify.PREPROCESSING``.
    """

    name: str
    suffix: str
    runtime: str
    preprocessing: str
    self_describing: bool
    input_kind: Optional[str] = None  # for self-describing targets: force "float" (None: --input decides)
    feed: Optional[Callable[[Sequence[float], Sequence[float]], Affine]] = None
    softmax: bool = False
    input_name: str = "image"
    output_name: str = "logits"
    dynamic_batch: bool = True
    opset: Optional[int] = None  # pinned opset; None: --opset
    fp32_graph: bool = False  # TensorRT picks the precision at engine build; the file keeps FP32 weights
    feed_label: str = ""  # the input column of the export table, for targets with a ``feed``


TARGETS: Dict[str, Target] = {t.name: t for t in (
    Target("onnxruntime", ".onnx", "edge-classify (onnxruntime: TensorRT / CUDA / CPU)", "crop",
           self_describing=True),
    Target("jetson-inference", ".jetson.onnx", "jetson-inference imagenet / imagenet.py", "stretch-nearest",
           self_describing=False, feed=_jetson_inference_feed, softmax=True, input_name="input_0",
           output_name="output_0", dynamic_batch=False, opset=TRT_OPSET, fp32_graph=True,
           feed_label="float ImageNet-normalised"),
    Target("deepstream", ".deepstream.onnx", "DeepStream nvinfer (network-type=1)", "stretch-bilinear",
           self_describing=False, feed=_pixels_0_255, softmax=True, input_name="input",
           output_name="probabilities", opset=TRT_OPSET, fp32_graph=True, feed_label="float 0..255"),
    Target("tensorrt", ".tensorrt.onnx", "TensorRT (trtexec, Python API); edge-classify", "crop",
           self_describing=True, input_kind="float", opset=TRT_OPSET, fp32_graph=True),
    Target("torchscript", ".ts", "edge-classify (torch; secondary)", "crop", self_describing=True),
)}
MAIN_TARGETS = ("onnxruntime", "jetson-inference", "deepstream", "tensorrt")  # what --target all writes


def target_names() -> List[str]:
    return [ALL, *TARGETS]


def target_for_path(path: Path) -> Optional[Target]:
    """The target a file name asks for by its ending (the longest that matches), or None."""
    name = Path(path).name.lower()
    matches = [t for t in TARGETS.values() if name.endswith(t.suffix) and len(name) > len(t.suffix)]
    return max(matches, key=lambda t: len(t.suffix)) if matches else None


def resolve_outputs(outs: Sequence[Path], names: Sequence[str]) -> List[Tuple[Path, Target]]:
    """Pair each output file with its target.

    No ``--target``: each ``--out``'s ending picks it (``m.onnx`` onnxruntime, ``m.jetson.onnx``
    jetson-inference, ``m.ts`` torchscript...). As many ``--target`` as ``--out``: paired in order.
    One ``--out`` and several targets: the other files are named from it (``m.onnx`` ->
    ``m.jetson.onnx``, ``m.deepstream.onnx``...).
    """
    targets = _expand(names)
    if not targets:
        pairs = []
        for out in outs:
            target = target_for_path(out)
            if target is None:
                raise TargetError(f"{out}: unknown output suffix {Path(out).suffix or '(none)'!r}; use one of "
                                  f"{', '.join(t.suffix for t in TARGETS.values())}")
            pairs.append((Path(out), target))
    elif len(outs) == len(targets):
        pairs = list(zip((Path(o) for o in outs), targets))
    elif len(outs) == 1:
        pairs = [(derived_path(outs[0], t), t) for t in targets]
    else:
        raise TargetError(f"{len(targets)} targets but {len(outs)} --out files: give one --out per target, "
                          "or one --out to name them all after")
    for out, target in pairs:
        _check_suffix(out, target)
    if len({p.resolve() for p, _ in pairs}) != len(pairs):
        raise TargetError("two outputs would be written to the same file: " + ", ".join(str(p) for p, _ in pairs))
    return pairs


def derived_path(out: Path, target: Target) -> Path:
    """``out`` renamed for ``target``: its own ending (``.jetson.onnx``) on the stem of ``out``."""
    out = Path(out)
    known = target_for_path(out)
    stem = out.name[: -len(known.suffix)] if known else out.stem
    return out.with_name(stem + target.suffix)


def side_file(model_path: Path, ending: str) -> Path:
    """A file beside the model, named after it: ``m.jetson.onnx`` -> ``m.jetson.labels.txt``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name[: -len(model_path.suffix)] + ending)


def _expand(names: Sequence[str]) -> List[Target]:
    targets: List[Target] = []
    for name in names:
        for one in (MAIN_TARGETS if name == ALL else (name,)):
            if one not in TARGETS:
                raise TargetError(f"unknown target {one!r}; choose from {', '.join(target_names())}")
            if TARGETS[one] not in targets:
                targets.append(TARGETS[one])
    return targets


def _check_suffix(out: Path, target: Target) -> None:
    wanted = ".ts" if target.name == "torchscript" else ".onnx"
    if out.suffix.lower() != wanted:
        raise TargetError(f"{out}: the {target.name} target writes a {wanted} file")


class FeedToModel(nn.Module):
    """``model`` behind a runtime's feed: undo ``feed = p * a + b``, apply the model's mean/std, maybe Softmax.

    The two affine maps fold into one multiply-add (computed in float64, rounded once); when the
    runtime already feeds what the model wants (TensorRT's normalised input), no op is added at all.
    """

    def __init__(self, model: nn.Module, *, feed: Affine, mean: Sequence[float], std: Sequence[float],
                 softmax: bool) -> None:
        super().__init__()
        self.model = model
        a, b = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in feed)
        want_a, want_b = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in normalised_feed(mean, std))
        # model input = p * want_a + want_b with p = (feed - b) / a
        scale = want_a / a
        shift = want_b - b * scale
        self.identity = bool(torch.allclose(scale, torch.ones_like(scale), rtol=0, atol=1e-7)
                             and torch.allclose(shift, torch.zeros_like(shift), rtol=0, atol=1e-7))
        self.register_buffer("scale", scale.float())
        self.register_buffer("shift", shift.float())
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.identity:
            x = x * self.scale + self.shift
        out = self.model(x)
        return torch.softmax(out, dim=1) if self.softmax else out
