"""``edge-train --init MODEL``: start from the deployed model, its labels kept at their indices.

    init = find_init(Path("runs/deployed.pt"))      # or deployed.onnx / .ts: its source checkpoint, beside it
    folders = find_image_folders(data, class_order=init.classes)   # its classes first, new ones appended
    model.load_state_dict(init_state(model, arch, init, folders.classes))   # backbone as is, head by label
    init.record()                                   # {"file", "sha256", "classes"}: the new checkpoint's "init"
    label_changes(folders.classes, init.classes, "deployed.pt")
    # '8 (7 as in deployed.pt, in the same order; added: zebra)'

MODEL is an edge-train checkpoint, or an artifact whose metadata ``source`` is ``checkpoint:NAME``
(what edge-export writes): the checkpoint NAME is then looked up beside the artifact, and must have the
artifact's labels. The head is matched by label name, not by shape: each class the init model knows gets
its row of the final linear layer (weight and bias); a new class keeps the fresh initialisation.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from edge.contract import Key

from ..errors import UsageError
from ..zoo import Arch, _abbreviate, head_of
from .checkpoint import CheckpointError, load_checkpoint

ARTIFACT_SUFFIXES = (".onnx", ".ts", ".torchscript")  # never a checkpoint; a .pt may be either
SOURCE_PREFIX = "checkpoint:"  # an artifact's metadata "source" when edge-export read a checkpoint


@dataclass(frozen=True)
class InitModel:
    """The checkpoint a run starts from, and the file ``--init`` named (the checkpoint or an artifact of it)."""

    path: Path
    ckpt: Mapping[str, Any]
    given: Path

    @property
    def classes(self) -> List[str]:
        return list(self.ckpt["classes"])

    def settings(self) -> Dict[str, Any]:
        """What the new run takes from the model: architecture, input side, mean/std."""
        return {"arch": self.ckpt["arch"], "image_size": self.ckpt["input_side"],
                "mean": tuple(self.ckpt["mean"]), "std": tuple(self.ckpt["std"])}

    def record(self) -> Dict[str, Any]:
        """Where the run started, as the new checkpoint keeps it (plain data only)."""
        from edge.model.swap import file_sha256

        return {"file": self.path.name, "sha256": file_sha256(self.path), "classes": self.classes}

    def describe(self) -> str:
        return str(self.path) + (f" (the source of {self.given.name})" if self.given != self.path else "")


def find_init(given: Path) -> InitModel:
    """The checkpoint ``--init`` names: the file itself, or the source checkpoint beside an artifact."""
    given = Path(given)
    if not given.is_file():
        raise UsageError(f"--init {given}: no such file")
    if given.suffix.lower() in ARTIFACT_SUFFIXES or _is_torchscript(given):
        return _from_artifact(given)
    return InitModel(given, load_checkpoint(given), given)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (a .pt can be one): a zip holding constants.pkl, which a checkpoint never has."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rpartition("/")[2] == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _from_artifact(artifact: Path) -> InitModel:
    """The checkpoint named by the artifact's metadata ``source``, beside it, with the artifact's labels."""
    meta, labels = _artifact_metadata(artifact)
    source = meta.get(Key.SOURCE, "")
    name = source[len(SOURCE_PREFIX):] if source.startswith(SOURCE_PREFIX) else ""
    if not name or Path(name).name != name or name in (".", ".."):
        raise UsageError(f"--init {artifact}: it was not exported from an edge-train checkpoint (source {source!r}); "
                         "pass the checkpoint to start from")
    path = artifact.parent / name
    if not path.is_file():
        raise UsageError(f"--init {artifact}: its source checkpoint {name} is not beside it ({path}); pass the "
                         "checkpoint it was exported from: --init PATH/" + name)
    ckpt = load_checkpoint(path)
    if list(ckpt["classes"]) != list(labels):
        raise UsageError(f"--init {artifact}: {path} has other classes than the artifact's labels, so it is not the "
                         "checkpoint the artifact was exported from; pass that checkpoint")
    return InitModel(path, ckpt, artifact)


def _artifact_metadata(artifact: Path) -> Tuple[Dict[str, str], Tuple[str, ...]]:
    """The artifact's metadata and labels, read as the device reads them (a UsageError when it cannot be)."""
    from edge.model.artifact import ArtifactError, spec_from_metadata
    from edge.model.backends import BackendError, open_backend

    try:
        backend = open_backend(artifact, device="cpu")
        spec = spec_from_metadata(backend.metadata, input_shape=backend.input_shape, input_dtype=backend.input_dtype,
                                  num_classes=backend.num_classes, name=artifact.name)
    except (BackendError, ArtifactError) as exc:
        raise UsageError(f"--init {artifact}: {exc}") from None
    return dict(backend.metadata), spec.labels


def init_state(model: nn.Module, arch: Arch, init: InitModel, classes: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The init model's state for ``model``: every non-head entry as it is; the final linear layer's row of
    each class the init model knows copied from its row for that label, the others as ``model`` has them.

    ``model.load_state_dict`` of it (strict) then refuses a backbone that does not fit exactly."""
    state = dict(init.ckpt["model"])
    head = head_of(model, arch)
    keys = (f"{arch.head}.weight", f"{arch.head}.bias")
    old_weight, old_bias = state.get(keys[0]), state.get(keys[1])
    rows = {name: row for row, name in enumerate(init.classes)}
    if not (isinstance(old_weight, torch.Tensor) and isinstance(old_bias, torch.Tensor)
            and tuple(old_weight.shape) == (len(rows), head.in_features) and tuple(old_bias.shape) == (len(rows),)):
        raise CheckpointError(f"{init.path}: its {arch.head} is not a {arch.name} head for its {len(rows)} classes")
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    for row, name in enumerate(classes):
        if name in rows:
            weight[row], bias[row] = old_weight[rows[name]], old_bias[rows[name]]
    state[keys[0]], state[keys[1]] = weight, bias
    return state


def label_changes(classes: Sequence[str], init_classes: Sequence[str], name: str) -> str:
    """``8 (7 as in deployed.pt, in the same order; added: zebra)``: ``classes`` against the init model's."""
    old, new = set(init_classes), set(classes)
    kept = [c for c in init_classes if c in new]
    same = list(classes[: len(init_classes)]) == list(init_classes)
    parts = [f"{len(kept)} as in {name}, " + ("in the same order" if same else "at other indices")]
    added = [c for c in classes if c not in old]
    dropped = [c for c in init_classes if c not in new]
    if added:
        parts.append(f"added: {_abbreviate(added, 10)}")
    if dropped:
        parts.append(f"dropped: {_abbreviate(dropped, 10)}")
    return f"{len(classes)} ({'; '.join(parts)})"

