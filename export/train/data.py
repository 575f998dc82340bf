"""Image folders for edge-train: find the classes, split off validation when there is none, read images safely.

    folders = find_image_folders(Path("photos"), val_fraction=0.2, seed=0)
    folders.classes, folders.train, folders.val      # [(Path, class index)], sorted, reproducible
    train_set = ImageFiles(folders.train, train_transform(side=224, resize=256, augment="default"))
    val_set = ImageFiles(folders.val, eval_transform(side=224, resize=256))

Layouts: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``, or only ``DIR/<class>/*`` (or only ``DIR/train``),
from which ``val_fraction`` of each class is split off with a fixed seed. Class names are the folder
names, sorted, as torchvision's ``ImageFolder`` has them; hidden files and folders (``.ipynb_checkpoints``)
are ignored. Files with an image suffix that do not open are skipped and counted, never fatal.

``class_order`` (a model's classes, for ``edge-train --init`` and ``--resume``) fixes the class indices
instead: its classes in its order, then the folders it lacks, sorted. A class of it with no folder here
stays in ``classes`` without images and is listed in ``missing``; the split is the same as without it.

``eval_transform`` is THE spec the device reproduces (edge/model/preprocess.py): PIL bilinear resize with
antialias of the shorter side to ``resize``, then a center crop of ``side``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torchvision.transforms as T
from torch.utils.data import Dataset, default_collate

from edge.contract import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, resize_for  # noqa: F401 (resize_for re-exported)

from ..errors import DataError
from ..load import error_reason

log = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.2
Sample = Tuple[Path, int]


@dataclass
class ImageFolders:
    """The classes and the train and validation samples of one data folder."""

    root: Path
    classes: List[str]
    train: List[Sample]
    val: List[Sample]
    split_fraction: Optional[float] = None  # the fraction split off into val; None when val/ was given
    seed: int = 0  # the split's
    skipped: List[Tuple[Path, str]] = field(default_factory=list)  # unreadable images and why
    missing: List[str] = field(default_factory=list)  # classes of the class_order with no folder here

    def describe(self) -> str:
        how = (f"split {self.split_fraction:.0%} of each class off for validation, seed {self.seed}"
               if self.split_fraction else "train/ and val/")
        return (f"{self.root}: {len(self.classes)} classes, {len(self.train)} train and {len(self.val)} val "
                f"images ({how})")


def eval_crop(*, side: int, resize: int) -> Callable:
    """PIL image -> the resized, center-cropped PIL image the model sees (and the device reproduces)."""
    return T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                      T.CenterCrop(side)])


def to_normalised_tensor(*, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Callable:
    """PIL crop -> float CHW tensor: ToTensor + Normalize (what an artifact does inside its graph)."""
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(*, side: int, resize: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Callable:
    """Validation: Resize + CenterCrop, then ToTensor + Normalize."""
    return T.Compose([eval_crop(side=side, resize=resize), to_normalised_tensor(mean=mean, std=std)])


def train_transform(*, side: int, resize: int, augment: str = "default", mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Callable:
    """Training: the tutorial's RandomResizedCrop + horizontal flip, or (``augment="none"``) the eval crop."""
    if augment == "none":
        return eval_transform(side=side, resize=resize, mean=mean, std=std)
    return T.Compose([T.RandomResizedCrop(side, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def find_image_folders(root: Path, *, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
                       class_order: Optional[Sequence[str]] = None) -> ImageFolders:
    """The classes and samples under ``root`` (see the module's docstring for the layouts and ``class_order``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}" if not root.exists() else f"not a folder: {root}")
    train_dir, val_dir = root / "train", root / "val"
    if val_dir.is_dir() and not train_dir.is_dir():
        raise DataError(f"{root} has val/ but no train/")
    min_classes = 2 if class_order is None else 1  # with a class order, the model has the others
    if train_dir.is_dir() and val_dir.is_dir():
        found, train, skipped = _scan(train_dir, min_classes=min_classes)
        val_found, val, val_skipped = _scan(val_dir, min_classes=1, need_images=False)
        if val_found != found:
            raise DataError(f"train/ and val/ in {root} have different classes: {_difference(found, val_found)}")
        if not val:
            raise DataError(f"{val_dir} has no images")
        split, skipped = None, skipped + val_skipped
    else:
        found, samples, skipped = _scan(train_dir if train_dir.is_dir() else root, min_classes=min_classes)
        train, val = split_samples(samples, val_fraction=val_fraction, seed=seed)
        if not val:
            raise DataError(f"{root}: too few images to split off {val_fraction:.0%} for validation; "
                            "add images or a val/ folder")
        split = val_fraction
    classes = ordered_classes(found, class_order)
    return ImageFolders(root, classes, _renumber(train, found, classes), _renumber(val, found, classes), split, seed,
                        skipped, [name for name in classes if name not in found])


def ordered_classes(found: Sequence[str], order: Optional[Sequence[str]]) -> List[str]:
    """``order``'s classes in its order, then the classes of ``found`` it lacks, sorted (no order: ``found``)."""
    known = set(order or ())
    return list(order or ()) + sorted(name for name in found if name not in known)


def _renumber(samples: Sequence[Sample], found: Sequence[str], classes: Sequence[str]) -> List[Sample]:
    """Samples numbered by their folder's place in ``found`` -> by its place in ``classes``."""
    index = [classes.index(name) for name in found]
    return [(path, index[target]) for path, target in samples]


def split_samples(samples: Sequence[Sample], *, val_fraction: float, seed: int) -> Tuple[List[Sample], List[Sample]]:
    """``val_fraction`` of each class (at least one image, never all) into val, the rest into train."""
    rng = random.Random(seed)
    by_class: dict = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    train: List[Sample] = []
    val: List[Sample] = []
    for target in sorted(by_class):
        items = sorted(by_class[target])
        rng.shuffle(items)
        count = min(max(round(len(items) * val_fraction), 1), len(items) - 1)
        val.extend(sorted(items[:count]))
        train.extend(sorted(items[count:]))
    return train, val


def spread_across_classes(samples: Sequence[Sample], limit: int) -> List[Sample]:
    """Up to ``limit`` samples taken in turn from each class (the first of each class, then the second...)."""
    by_class: dict = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    queues = [by_class[t] for t in sorted(by_class)]
    picked: List[Sample] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if rank < len(queue):
                picked.append(queue[rank])
                if len(picked) == limit:
                    return picked
    return picked


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def open_rgb(path: Path):
    """A PIL RGB image, turned upright by its EXIF orientation, as OpenCV (the device's decoder) does.

    16-bit grayscale keeps its high byte, as OpenCV's IMREAD_COLOR does; PIL's own convert("RGB")
    clips it to 255 instead, and a model trained on white images would meet grey ones on the device.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        if upright.mode in SIXTEEN_BIT_MODES:
            upright = Image.fromarray(high_byte(np.asarray(upright)))
        return upright.convert("RGB")


def high_byte(pixels: np.ndarray) -> np.ndarray:
    """16-bit samples (in any integer array) as 8-bit: the top 8 bits, as libpng's strip-16 gives OpenCV."""
    return (np.clip(pixels.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


class ImageFiles(Dataset):
    """``(path, class index)`` samples -> ``(transformed image, class index)``; ``None`` for an unreadable file."""

    def __init__(self, samples: Sequence[Sample], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = open_rgb(path)
        except Exception as exc:  # PIL raises OSError, ValueError, DecompressionBombError, SyntaxError...
            log.warning("skipping %s: %s", path, error_reason(exc))
            return None
        return self.transform(image), target


def collate_readable(batch: List):
    """``default_collate`` of the samples that could be read; ``None`` when none could."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None


def _scan(folder: Path, *, min_classes: int = 2, need_images: bool = True
          ) -> Tuple[List[str], List[Sample], List[Tuple[Path, str]]]:
    """The class folders' names, sorted; the readable images numbered by them; the unreadable ones and why."""
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{folder} has no class folders: put each class's images in a folder named after it "
                        f"({folder}/<class>/*.jpg)")
    if len(class_dirs) < min_classes:
        raise DataError(f"{folder} has one class only ({class_dirs[0].name}); a classifier needs at least two")
    samples: List[Sample] = []
    skipped: List[Tuple[Path, str]] = []
    for target, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))
        readable = 0
        for path in files:
            reason = _unreadable(path)
            if reason:
                skipped.append((path, reason))
            else:
                samples.append((path, target))
                readable += 1
        if need_images and not readable:
            raise DataError(f"class folder {class_dir} has no readable images")
    return [d.name for d in class_dirs], samples, skipped


def _unreadable(path: Path) -> Optional[str]:
    """Why ``path`` is not an image PIL can open (a quick check of headers and, for PNG, checksums)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # see ImageFiles.__getitem__
        return error_reason(exc)
    return None


def _difference(train: Sequence[str], val: Sequence[str]) -> str:
    parts = []
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if only_train:
        parts.append(f"only in train/: {', '.join(only_train[:5])}" + (" ..." if len(only_train) > 5 else ""))
    if only_val:
        parts.append(f"only in val/: {', '.join(only_val[:5])}" + (" ..." if len(only_val) > 5 else ""))
    return "; ".join(parts)

