"""The metadata every artifact carries, so a device needs nothing but the file.

The same flat ``str -> str`` dict goes into ONNX ``metadata_props`` and into the TorchScript
``_extra_files`` entry ``edge_classifier.json``; ``edge.artifact`` reads it back::

    meta = artifact_metadata(arch="resnet18", labels=["ant", "bee"], input_side=224, resize_side=256,
                             precision="fp16", input_kind="uint8", source="none")
"""

from __future__ import annotations

import json
from typing import Dict, Sequence

from . import __version__

FORMAT_VERSION = "1"
TORCHSCRIPT_METADATA_FILE = "edge_classifier.json"
INPUT_KINDS = ("uint8", "float")
PRECISIONS = ("fp32", "fp16")


def exporter_version() -> str:
    """``edge-classifier X (torch Y, torchvision Z)``: which tools wrote the file."""
    import torch
    import torchvision

    return f"edge-classifier {__version__} (torch {torch.__version__}, torchvision {torchvision.__version__})"


def artifact_metadata(
    *,
    arch: str,
    labels: Sequence[str],
    input_side: int,
    resize_side: int,
    precision: str,
    input_kind: str,
    source: str,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> Dict[str, str]:
    """The metadata dict for one artifact, every value a string."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input kind must be one of {INPUT_KINDS}, not {input_kind!r}")
    return {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "labels": json.dumps(list(labels)),
        "num_classes": str(len(labels)),
        "input_side": str(int(input_side)),
        "resize_side": str(int(resize_side)),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "interpolation": interpolation,
        "precision": precision,
        "input": input_kind,
        "layout": "NHWC" if input_kind == "uint8" else "NCHW",
        "exporter": exporter_version(),
        "source": source,
    }
