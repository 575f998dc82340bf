"""The torchvision classifiers edge-classifier knows: how to build each, where its head is, its sizes.

Adding a torchvision classifier is one line in ``ARCHITECTURES``::

    from export.zoo import build_model, get_arch
    model = build_model("resnet18", num_classes=2)        # random init, new 2-class head
    spec = get_arch("inception_v3"); spec.input_side      # 299
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn
import torchvision.models

from edge.contract import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported: the host's default statistics)

from .errors import UnknownArchError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arch:
    """One supported architecture.

    ``head`` is the dotted path of the final ``nn.Linear`` (replaced for a new class count);
    ``blocks`` the dotted path of the backbone's sequence of blocks (``--freeze N``), or ``""`` for
    the model's own top-level children; ``build_kwargs`` what torchvision passes its builder when it
    loads pretrained weights (so a local copy of those weights loads the same way); ``skip_prefixes``
    state-dict keys that exist only for training (auxiliary heads) and are dropped quietly.
    """

    name: str
    head: str
    blocks: str = ""
    input_side: int = 224
    resize_side: int = 256
    build_kwargs: Mapping[str, Any] = field(default_factory=dict)
    skip_prefixes: Tuple[str, ...] = ()


ARCHITECTURES: Dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("mobilenet_v2", head="classifier.1", blocks="features"),
        Arch("resnet18", head="fc"),
        Arch("alexnet", head="classifier.6", blocks="features"),
        Arch("vgg16", head="classifier.6", blocks="features"),
        Arch("densenet121", head="classifier", blocks="features"),
        Arch("googlenet", head="fc",
             build_kwargs={"aux_logits": False, "transform_input": True, "init_weights": False},
             skip_prefixes=("aux1.", "aux2.")),
        Arch("inception_v3", head="fc", input_side=299, resize_side=342,
             build_kwargs={"aux_logits": False, "transform_input": True, "init_weights": False},
             skip_prefixes=("AuxLogits.",)),
    )
}
DEFAULT_ARCH = "mobilenet_v2"


def get_arch(name: str) -> Arch:
    """The registry entry for ``name``; a clear error listing the choices otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchError(
            f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}") from None


def build_model(name: str, num_classes: int = 1000) -> nn.Module:
    """A randomly initialised torchvision model ``name`` whose head has ``num_classes`` outputs."""
    arch = get_arch(name)
    model = torchvision.models.get_model(name, weights=None, **dict(arch.build_kwargs))
    if num_classes != head_of(model, arch).out_features:
        replace_head(model, arch, num_classes)
    return model


def head_of(model: nn.Module, arch: Arch) -> nn.Linear:
    """The final linear layer of ``model``."""
    return model.get_submodule(arch.head)


def replace_head(model: nn.Module, arch: Arch, num_classes: int) -> None:
    """Swap the final linear layer for a fresh one with ``num_classes`` outputs."""
    old = head_of(model, arch)
    parent_path, _, child = arch.head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, nn.Linear(old.in_features, num_classes))


def backbone_blocks(model: nn.Module, arch: Arch) -> List[nn.Module]:
    """The backbone's blocks in forward order, the head excluded (what ``--freeze N`` counts)."""
    if arch.blocks:
        return list(model.get_submodule(arch.blocks).children())
    head_root = arch.head.split(".")[0]
    return [m for n, m in model.named_children() if n != head_root]


def pretrained_weights(name: str):
    """torchvision's default pretrained weights enum member for ``name``."""
    return torchvision.models.get_model_weights(name).DEFAULT


def imagenet_categories() -> List[str]:
    """The 1000 ImageNet class names in torchvision's order (from weights metadata: no download)."""
    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass
class LoadReport:
    """What a partial state-dict load did: keys it skipped because they did not fit, or were missing."""

    skipped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} key(s) that do not fit: {_abbreviate(self.skipped)}")
        if self.missing:
            parts.append(f"{len(self.missing)} key(s) not in the file kept their initial values: "
                         f"{_abbreviate(self.missing)}")
        return "; ".join(parts) or "all keys loaded"


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], arch: Arch) -> LoadReport:
    """Load the entries of ``state`` that fit ``model`` (same name and shape); report the rest.

    Like the seed tutorials' partial load: a checkpoint whose head has another class count still
    gives its backbone.
    """
    own = model.state_dict()
    report = LoadReport()
    fitting = {}
    for key, value in state.items():
        if key.startswith(arch.skip_prefixes):
            continue
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            fitting[key] = value
        else:
            report.skipped.append(key)
    report.missing = [k for k in own if k not in fitting and not k.endswith("num_batches_tracked")]
    model.load_state_dict(fitting, strict=False)
    return report


def _abbreviate(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
