"""Turn ``--weights pretrained|none|PATH`` or ``--checkpoint CKPT`` into an eager model and what describes it.

    loaded = load_model("resnet18", weights="resnet18-f37072fd.pth")
    loaded.model, loaded.labels, loaded.input_side, loaded.resize_side, loaded.source

Weights files are read with ``torch.load(weights_only=True)``: a file from the internet must not be
able to run code. Keys that do not fit (another head) are reported and skipped, like the seed
tutorials' partial load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from edge import contract
from edge.model.artifact import ArtifactError, read_labels
from edge.contract import ContractError

from .errors import WeightsError
from .zoo import (IMAGENET_MEAN, IMAGENET_STD, Arch, LoadReport, build_model, get_arch, head_of,
                  imagenet_categories, load_matching, pretrained_weights, replace_head)

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """An eager FP32 model in eval mode and everything an artifact says about it."""

    model: nn.Module
    arch: str
    labels: List[str]
    input_side: int
    resize_side: int
    source: str
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    verify_images: List[Path] = field(default_factory=list)
    init: Mapping[str, Any] = field(default_factory=dict)  # a checkpoint's record of the model it started from


def load_model(arch_name: str, weights: str = "pretrained", *, num_classes: Optional[int] = None,
               labels: Optional[Sequence[str]] = None) -> LoadedModel:
    """Build ``arch_name`` with ``weights`` ("pretrained", "none" or a path to a state dict)."""
    arch = get_arch(arch_name)
    wanted = num_classes or (len(labels) if labels else None)
    if weights == "pretrained":
        loaded = _pretrained(arch, wanted)
    elif weights == "none":
        loaded = LoadedModel(build_model(arch.name, wanted or 1000), arch.name, [], arch.input_side,
                             arch.resize_side, "none")
    else:
        loaded = _from_state_dict_file(arch, Path(weights), wanted)
    return _with_labels(loaded, labels)


def load_checkpoint_model(path: Path, *, labels: Optional[Sequence[str]] = None) -> LoadedModel:
    """The model saved by ``edge-train`` in ``path``, with its classes, sizes and validation images."""
    from .train.checkpoint import checkpoint_val_images, load_checkpoint

    ckpt = load_checkpoint(path)
    arch, (input_side, resize_side), (mean, std) = _checked_contract_values(ckpt, path)
    classes = list(ckpt["classes"])
    model = build_model(arch.name, len(classes))
    report = load_matching(model, ckpt["model"], arch)
    if report.skipped or report.missing:
        raise WeightsError(f"{path}: the checkpoint does not fit {arch.name}: {report.summary()}")
    loaded = LoadedModel(model.eval(), arch.name, classes, input_side, resize_side, f"checkpoint:{Path(path).name}",
                         mean, std, checkpoint_val_images(ckpt), dict(ckpt.get("init") or {}))
    return _with_labels(loaded, labels)


def _checked_contract_values(ckpt: Mapping[str, Any], path: Path) -> Tuple[Arch, Tuple[int, int], tuple]:
    """The checkpoint's architecture, sides and mean/std, checked as the device checks an artifact's
    (``edge.contract``): a hand-edited or damaged checkpoint is one line, not a crash or a 10 GB input."""
    if not isinstance(ckpt["arch"], str):
        raise WeightsError(f"{path}: the checkpoint's arch must be a name, not {type(ckpt['arch']).__name__}")
    model = ckpt["model"]
    if not (isinstance(model, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in model.items())):
        raise WeightsError(f"{path}: the checkpoint's model is not a state dict (parameter names to tensors)")
    try:
        return (get_arch(ckpt["arch"]), contract.check_sides(ckpt["input_side"], ckpt["resize_side"]),
                contract.check_mean_std(ckpt["mean"], ckpt["std"]))
    except ContractError as exc:
        raise WeightsError(f"{path}: the checkpoint breaks the artifact contract: {exc}") from None


def read_labels_file(path: Path) -> List[str]:
    """One label per line (trailing blank lines ignored), read as the device reads ``--labels``: UTF-8 with a
    byte-order mark dropped, a regular file of sane size; a WeightsError otherwise."""
    try:
        return list(read_labels(Path(path)))
    except ArtifactError as exc:
        raise WeightsError(str(exc)) from None


def _pretrained(arch: Arch, num_classes: Optional[int]) -> LoadedModel:
    import torchvision

    weights = pretrained_weights(arch.name)
    try:
        model = torchvision.models.get_model(arch.name, weights=weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated download a RuntimeError
        raise pretrained_unavailable(arch.name, weights, exc) from None
    preset = weights.transforms()
    loaded = LoadedModel(model.eval(), arch.name, list(weights.meta["categories"]), preset.crop_size[0],
                         preset.resize_size[0], f"pretrained:{weights}", tuple(preset.mean), tuple(preset.std))
    if num_classes and num_classes != len(loaded.labels):
        log.warning("replacing the %d-class head with an untrained %d-class one", len(loaded.labels), num_classes)
        replace_head(loaded.model, arch, num_classes)
        loaded.labels = []
    return loaded


def _from_state_dict_file(arch: Arch, path: Path, num_classes: Optional[int]) -> LoadedModel:
    state = read_state_dict(path)
    model = build_model(arch.name, num_classes or _classes_in_file(state, arch) or 1000)
    report = load_fitting_weights(model, state, arch, str(path))
    if report.skipped or report.missing:
        log.warning("%s: %s", path.name, report.summary())
    return LoadedModel(model.eval(), arch.name, [], arch.input_side, arch.resize_side, f"file:{path.name}")


def load_fitting_weights(model: nn.Module, state: Mapping[str, torch.Tensor], arch: Arch, source: str) -> LoadReport:
    """Load what fits of ``state`` into ``model``; a WeightsError if most of the model is not there (wrong arch)."""
    report = load_matching(model, state, arch)
    own = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(report.missing) > len(own) / 2:
        raise WeightsError(f"{source}: most of {arch.name} is not in this file ({report.summary()}); "
                           "is it weights for another architecture?")
    return report


def _classes_in_file(state: Mapping[str, torch.Tensor], arch: Arch) -> Optional[int]:
    """The class count of the file's head, if the file has a head that fits this architecture."""
    weight = state.get(f"{arch.head}.weight")
    expected_in = head_of(build_model(arch.name), arch).in_features
    if weight is not None and weight.dim() == 2 and weight.shape[1] == expected_in:
        return int(weight.shape[0])
    return None


def load_safely(path: Path, *, missing: str, unsafe: str, error: type = WeightsError):
    """``torch.load(weights_only=True)`` of ``path``: a file from elsewhere cannot run code. ``error(missing)``
    when there is no such file, ``error(unsafe + reason)`` when torch refuses it."""
    if not Path(path).is_file():
        raise error(missing)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or unsafe pickles
        raise error(f"{unsafe} ({error_reason(exc)})") from None


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    from .train.checkpoint import CHECKPOINT_FORMAT

    obj = load_safely(path, missing=f"weights file not found: {path} (use --weights pretrained, none, or a .pth path)",
                      unsafe=f"{path} is not a PyTorch weights file that loads safely")
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is an edge-train checkpoint: pass it with --checkpoint")
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not (isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise WeightsError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    return obj


def _with_labels(loaded: LoadedModel, labels: Optional[Sequence[str]]) -> LoadedModel:
    classes = head_of(loaded.model, get_arch(loaded.arch)).out_features
    if labels is not None:
        if len(labels) != classes:
            raise WeightsError(f"the labels file has {len(labels)} labels but the model has {classes} classes")
        loaded.labels = list(labels)
    elif len(loaded.labels) != classes:
        if classes == 1000:
            loaded.labels = imagenet_categories()
        else:
            log.warning("no labels given for %d classes: naming them 'class 0'...; pass --labels FILE", classes)
            loaded.labels = [f"class {i}" for i in range(classes)]
    return loaded


def pretrained_unavailable(arch_name: str, weights, exc: BaseException) -> WeightsError:
    """The one-line error for torchvision weights that could not be downloaded (offline, say), with the way out."""
    return WeightsError(f"cannot get the pretrained {arch_name} weights ({error_reason(exc)}); on a machine without "
                        f"internet, download {weights.url} elsewhere and pass it with --weights PATH")


def error_reason(exc: BaseException, limit: int = 200) -> str:
    """The line of an exception's message that says what went wrong (a URLError's reason, torch's unpickler cause)."""
    lines = [line.strip() for line in str(getattr(exc, "reason", None) or exc).strip().splitlines() if line.strip()]
    # torch's weights_only refusal starts with advice; the line that names the cause comes later.
    specific = [line for line in lines
                if line.startswith("WeightsUnpickler error") or "unsupported global" in line.lower()]
    return (specific or lines or [type(exc).__name__])[0][:limit]
