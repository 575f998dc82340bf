"""The metadata every artifact carries, so a device needs nothing but the file.

The keys, the format version and the TorchScript extra-file name are ``edge.contract``'s (the device
reads them with the same module). The same flat ``str -> str`` dict goes into ONNX
``metadata_props`` and into the TorchScript ``_extra_files`` entry; ``edge.model.artifact`` reads it back::

    meta = artifact_metadata(arch="resnet18", labels=["ant", "bee"], input_side=224, resize_side=256,
                             precision="fp16", input_kind="uint8", source="none")
"""

from __future__ import annotations

from typing import Dict, Sequence

from edge import contract
from edge.contract import Key

from . import __version__
from .errors import UsageError


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
    mean: Sequence[float] = contract.IMAGENET_MEAN,
    std: Sequence[float] = contract.IMAGENET_STD,
    interpolation: str = contract.DEFAULT_INTERPOLATION,
) -> Dict[str, str]:
    """The metadata dict for one artifact, every value a string."""
    if precision not in contract.PRECISIONS:
        raise UsageError(f"precision must be one of {contract.PRECISIONS}, not {precision!r}")
    if input_kind not in contract.INPUT_KINDS:
        raise UsageError(f"input kind must be one of {contract.INPUT_KINDS}, not {input_kind!r}")
    if interpolation not in contract.INTERPOLATIONS:
        raise UsageError(f"the device resizes with {', '.join(contract.INTERPOLATIONS)}, not {interpolation!r}")
    try:  # the values the device refuses at load are refused here, by the same checks
        input_side, resize_side = contract.check_sides(input_side, resize_side)
        mean, std = contract.check_mean_std(mean, std)
    except contract.ContractError as exc:
        raise UsageError(str(exc)) from None
    return {
        Key.FORMAT_VERSION: contract.FORMAT_VERSION,
        Key.ARCH: arch,
        Key.LABELS: contract.encode_labels(labels),
        Key.NUM_CLASSES: str(len(labels)),
        Key.INPUT_SIDE: str(int(input_side)),
        Key.RESIZE_SIDE: str(int(resize_side)),
        Key.MEAN: contract.encode_floats(mean),
        Key.STD: contract.encode_floats(std),
        Key.INTERPOLATION: interpolation,
        Key.PRECISION: precision,
        Key.INPUT: input_kind,
        Key.LAYOUT: contract.layout_for(input_kind),
        Key.EXPORTER: exporter_version(),
        Key.SOURCE: source,
    }
