"""What an artifact says about itself: labels, sizes, normalisation, input kind, precision.

An artifact written by ``edge-export`` carries a flat ``str -> str`` metadata dict (ONNX
``metadata_props``, TorchScript ``_extra_files``); its keys and defaults are ``edge.contract``'s. A
backend hands that dict and its input signature to :func:`spec_from_metadata`, which returns one
frozen :class:`ModelSpec` that drives preprocessing and output::

    spec = spec_from_metadata(meta, input_shape=[None, 224, 224, 3], input_dtype="uint8", num_classes=1000)
    spec.input_side, spec.resize_side, spec.labels[0]      # 224, 256, 'tench'

An ONNX file from elsewhere (no metadata) still runs: its input signature says uint8 NHWC or float
NCHW, the side comes from the shape, ImageNet statistics are assumed, and 1000-class models get the
ImageNet labels shipped in ``edge.labels``.
"""


import logging
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from edge import contract
from edge.contract import IMAGENET_MEAN, IMAGENET_STD, ContractError, Key
from edge.errors import EdgeError
from edge.resources import package_text

log = logging.getLogger(__name__)

MAX_LABELS_BYTES = 16 << 20  # 16 MB: a million labels; /dev/zero or a FIFO would never end


class ArtifactError(EdgeError, ValueError):
    """The artifact's metadata or the labels given for it cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the device needs to feed a model and name its outputs."""

    labels: Tuple[str, ...]
    input_side: int
    resize_side: int
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    interpolation: str = contract.DEFAULT_INTERPOLATION
    input_kind: str = contract.INPUT_UINT8  # "uint8": NHWC RGB bytes; "float": NCHW normalised float32
    precision: str = "fp32"
    arch: str = "unknown"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def with_labels(self, labels: Sequence[str]) -> "ModelSpec":
        """This spec with ``labels`` instead (``--labels``); they must match the class count."""
        if len(labels) != self.num_classes:
            raise ArtifactError(
                f"the labels file has {len(labels)} labels but the model has {self.num_classes} classes")
        return replace(self, labels=tuple(labels))


def spec_from_metadata(
    meta: Mapping[str, str],
    *,
    input_shape: Sequence[Optional[int]],
    input_dtype: str,
    num_classes: Optional[int],
    name: str = "the model",
) -> ModelSpec:
    """Build the spec from an artifact's metadata, falling back on its input signature (``name``: the file's).

    ``input_shape`` may hold ``None`` (or strings) for dynamic dimensions; ``input_dtype`` is
    ``"uint8"`` or a float type name; ``num_classes`` is the output width if the graph knows it.
    """
    try:
        contract.refuse_other_runtime(meta, name)
        contract.check_format_version(meta)
        input_kind = contract.read_input_kind(meta, input_dtype)
        interpolation = contract.read_interpolation(meta)
        precision = contract.read_precision(meta, input_dtype)
    except ContractError as exc:
        raise ArtifactError(str(exc)) from None
    try:
        side = int(meta[Key.INPUT_SIDE]) if Key.INPUT_SIDE in meta else _side_from_shape(input_shape, input_kind)
        resize = int(meta[Key.RESIZE_SIDE]) if Key.RESIZE_SIDE in meta else contract.resize_for(side)
        labels = _labels_from_metadata(meta, num_classes)
        spec = ModelSpec(
            labels=labels,
            input_side=side,
            resize_side=resize,
            mean=contract.read_floats(meta, Key.MEAN, IMAGENET_MEAN),
            std=contract.read_floats(meta, Key.STD, IMAGENET_STD),
            interpolation=interpolation,
            input_kind=input_kind,
            precision=precision,
            arch=meta.get(Key.ARCH, "unknown"),
        )
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ArtifactError(f"the model's metadata is unreadable: {exc}") from None
    _check(spec)
    check_against_graph(spec, input_shape, input_dtype)
    return spec


def check_against_graph(spec: ModelSpec, input_shape: Sequence[Optional[int]], input_dtype: str) -> None:
    """The metadata must describe the graph it sits in: the input kind its dtype, the side its shape."""
    graph_kind = "uint8" if input_dtype == "uint8" else "float"
    if spec.input_kind != graph_kind:
        raise ArtifactError(f"the model's metadata says {spec.input_kind} input but its graph takes {input_dtype}")
    dims = list(input_shape)
    if len(dims) != 4:
        raise ArtifactError(f"the model takes a {len(dims)}-D input, not a 4-D image batch")
    spatial, channels = (dims[1:3], dims[3]) if spec.input_kind == "uint8" else (dims[2:4], dims[1])
    if isinstance(channels, int) and channels != 3:
        raise ArtifactError(f"the model's graph takes {channels} channels, not 3 (RGB)")
    for size in spatial:
        if isinstance(size, int) and size != spec.input_side:
            raise ArtifactError(f"the model's metadata says input side {spec.input_side} but its graph takes "
                                f"{spatial[0]}x{spatial[1]}")


def read_labels(path: Path) -> Tuple[str, ...]:
    """One label per line; blank lines at the end are ignored. Only a regular file of sane size is read.

    UTF-8, with a byte-order mark (Windows Notepad's "UTF-8") dropped: it would otherwise stay in the first label.
    edge-export reads labels files with this function too."""
    try:
        info = os.stat(str(path))
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"labels file {path} is not a regular file")
        if info.st_size > MAX_LABELS_BYTES:
            raise ArtifactError(f"labels file {path} is {info.st_size / 1e6:.0f} MB; a labels file is text, "
                                f"one name per line (at most {MAX_LABELS_BYTES >> 20} MB)")
        with open(str(path), "rb") as handle:
            lines = handle.read(MAX_LABELS_BYTES).decode("utf-8-sig").splitlines()
    except OSError as exc:
        raise ArtifactError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"labels file {path} is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ArtifactError(f"labels file {path} is empty")
    return tuple(line.strip() for line in lines)


def imagenet_labels() -> Tuple[str, ...]:
    """The 1000 ImageNet class names shipped with the package (torchvision's order)."""
    text = package_text("edge.labels", "imagenet.txt")
    return tuple(text.splitlines())


def _labels_from_metadata(meta: Mapping[str, str], num_classes: Optional[int]) -> Tuple[str, ...]:
    labels = contract.read_label_list(meta)
    if labels is not None:
        if num_classes is not None and len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels for {num_classes} outputs")
        return labels
    if num_classes == 1000:
        log.info("the model carries no labels; using the ImageNet labels")
        return imagenet_labels()
    if num_classes is None:
        raise ValueError("the model carries no labels and its output width is unknown; pass --labels")
    log.info("the model carries no labels; naming its %d classes by number", num_classes)
    return tuple(f"class {i}" for i in range(num_classes))


def _side_from_shape(shape: Sequence[Optional[int]], input_kind: str) -> int:
    dims = list(shape)
    if len(dims) != 4:
        raise ValueError(f"expected a 4-D image input, the model takes {len(dims)}-D")
    side = dims[1] if input_kind == contract.INPUT_UINT8 else dims[2]
    return side if isinstance(side, int) and side > 0 else contract.DEFAULT_INPUT_SIDE


def _check(spec: ModelSpec) -> None:
    """Values that would crash, hang or silently mislead preprocessing are refused at load (``edge.contract``)."""
    try:
        contract.check_sides(spec.input_side, spec.resize_side)
        contract.check_mean_std(spec.mean, spec.std)
    except ContractError as exc:
        raise ArtifactError(f"the model's metadata: {exc}") from None
    if not spec.labels:
        raise ArtifactError("the model has no classes")
