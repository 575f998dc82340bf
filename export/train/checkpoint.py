"""edge-train checkpoints: one dict that describes itself, written atomically, read without running code.

    save_checkpoint(ckpt, Path("runs/digits.pt"))    # a temporary file beside it, then os.replace
    ckpt = load_checkpoint(Path("runs/digits.pt"))   # torch.load(weights_only=True), then checked
    ckpt["arch"], ckpt["classes"], ckpt["input_side"], ckpt["resize_side"], ckpt["model"]
    checkpoint_val_images(ckpt)                      # validation photos for edge-export's parity check

The keys: ``format`` ("edge-classifier-checkpoint") and ``version``; what export needs: ``arch``,
``classes``, ``model`` (the state dict), ``input_side``, ``resize_side``, ``interpolation``, ``mean``,
``std``, ``val_images`` (absolute paths, taken in turn from each class); what ``--resume`` needs:
``optimizer``, ``lr_scheduler``, ``epoch`` (epochs done), ``best_acc``, ``best_epoch``, ``history`` (one
dict per epoch) and ``args`` (the run's settings as a plain dict); and, to resume on another number of
processes, ``global_step`` (optimizer steps), ``world_size``, ``lr_scale`` and ``global_batch``, plus the
fp16 ``scaler`` state; for a run from ``--init``, ``init``: ``{"file", "sha256", "classes"}`` of the model
it started from. Only tensors, plain containers and str/int/float/bool/None go in: all that
``weights_only`` loading accepts. ``load_checkpoint`` checks the fields export and the device use (an input
side of 0 or 60000, a std of 0, a mean of two values are one line, not a crash) and ``check_resumable``
the ones ``--resume`` uses.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch

from edge import contract

from ..errors import WeightsError
from ..load import load_safely
from .files import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edge-classifier-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("arch", "classes", "model", "input_side", "resize_side", "mean", "std")
RESUME_KEYS = ("optimizer", "lr_scheduler", "epoch", "best_acc", "best_epoch", "args")
HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_correct", "val_images")
SIDE_RANGE = (8, 4096)  # an input side outside it is a broken or hostile file, not a model
VERIFY_IMAGES = 32  # how many validation images edge-export checks the artifact on


class CheckpointError(WeightsError):
    """A checkpoint that cannot be used; the message is one line for the user."""


class NotACheckpointError(CheckpointError):
    """A file that loads safely but was not written by edge-train (a plain state dict, say)."""


def save_checkpoint(ckpt: Mapping[str, Any], path: Path) -> Path:
    """Write ``ckpt`` to ``path`` through a temporary file, so a crash never leaves half a checkpoint."""
    _check_plain(ckpt, "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(dict(ckpt), str(tmp))
    return path


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """The checkpoint in ``path``, checked for the keys export and ``--resume`` rely on."""
    path = Path(path)
    ckpt = load_safely(path, missing=f"checkpoint not found: {path}",
                       unsafe=f"{path} is not a checkpoint that loads safely", error=CheckpointError)
    if not (isinstance(ckpt, Mapping) and ckpt.get("format") == CHECKPOINT_FORMAT):
        raise NotACheckpointError(f"{path} is not an edge-train checkpoint (a plain weights file goes to --weights)")
    version = ckpt.get("version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer edge-classifier (checkpoint version {version}); "
                              "upgrade edge-classifier to read it")
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)}")
    classes = ckpt["classes"]
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: the checkpoint's classes are not a list of names")
    _check_fields(ckpt, path)
    return dict(ckpt)


def check_resumable(ckpt: Mapping[str, Any], path: Path) -> None:
    """CheckpointError unless ``ckpt`` holds what ``--resume`` goes on from, with the right types."""
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint cannot be resumed: it lacks {', '.join(missing)}")
    for key in ("optimizer", "lr_scheduler", "args"):
        _expect(isinstance(ckpt[key], Mapping), path, key, "a dict")
    _expect(_is_int(ckpt["epoch"]) and ckpt["epoch"] >= 0, path, "epoch", "a whole number of epochs >= 0")
    _expect(_is_int(ckpt["best_epoch"]) and 0 <= ckpt["best_epoch"] <= ckpt["epoch"], path, "best_epoch",
            "an epoch already done")
    _expect(_is_number(ckpt["best_acc"]), path, "best_acc", "a number")
    history = ckpt.get("history", [])
    _expect(isinstance(history, list) and len(history) >= ckpt["epoch"] and all(
        isinstance(row, Mapping) and all(_is_number(row.get(key)) for key in HISTORY_KEYS)
        for row in history[: ckpt["epoch"]]), path, "history", "one row of numbers per epoch done")
    for key in ("global_step", "world_size"):
        if key in ckpt:
            _expect(_is_int(ckpt[key]) and ckpt[key] >= 0, path, key, "a whole number >= 0")


def _check_fields(ckpt: Mapping[str, Any], path: Path) -> None:
    """The fields export and the device use, refused in one line when a file holds nonsense in them."""
    _expect(isinstance(ckpt["arch"], str), path, "arch", "a name")
    model = ckpt["model"]
    _expect(isinstance(model, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in model.items()), path, "model", "a state dict of tensors")
    try:  # the same checks, and words, as an artifact's metadata gets on the device (edge.contract)
        contract.check_sides(ckpt["input_side"], ckpt["resize_side"])
        contract.check_mean_std(ckpt["mean"], ckpt["std"])
    except contract.ContractError as exc:
        raise CheckpointError(f"{path}: the checkpoint's {exc}") from None
    _expect(isinstance(ckpt.get("interpolation", ""), str), path, "interpolation", "a name")
    images = ckpt.get("val_images") or []
    _expect(isinstance(images, list) and all(isinstance(i, str) for i in images), path, "val_images",
            "a list of paths")
    init = ckpt.get("init")
    _expect(init is None or (isinstance(init, Mapping) and isinstance(init.get("file"), str)
                             and isinstance(init.get("sha256"), str) and isinstance(init.get("classes"), list)
                             and all(isinstance(c, str) for c in init["classes"])),
            path, "init", "a record of the model the run started from (file, sha256, classes)")


def _expect(ok: bool, path: Path, key: str, what: str) -> None:
    if not ok:
        raise CheckpointError(f"{path}: the checkpoint's {key} is not {what}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checkpoint_val_images(ckpt: Mapping[str, Any], limit: int = VERIFY_IMAGES) -> List[Path]:
    """Up to ``limit`` of the checkpoint's validation images that still exist, spread across the classes."""
    found = []
    for name in ckpt.get("val_images") or []:
        path = Path(name)
        if path.is_file():
            found.append(path)
            if len(found) == limit:
                break
    if not found and ckpt.get("val_images"):
        log.info("none of the checkpoint's validation images exist here; verifying on the built-in photos")
    return found


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Refuse, at save time, what ``weights_only`` loading would refuse later (a Path, a str subclass...)."""
    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return
    if type(value) in (dict, list, tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check_plain(key, where)
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) refuses")

