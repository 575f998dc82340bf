"""The seed pipeline, written out once: what tests hold edge-classify against and benchmarks time it against.

OpenCV read -> BGR to RGB -> PIL -> torchvision Resize(256), CenterCrop(224), ToTensor, Normalize
(ImageNet statistics) -> eager FP32 torch -> argmax. Written here with torchvision directly (not through
the project's own helpers), so that a test against it checks the project rather than itself::

    from reference import seed_transform, seed_top1, decoded_frames    # tests/ is on sys.path in tests
    top1 = seed_top1(model, Path("cat.jpg"))

Benchmarks put this folder on ``sys.path`` and import the same module.
"""

from pathlib import Path
from typing import Callable, List

import cv2
import numpy as np

SEED_MEAN = [0.485, 0.456, 0.406]
SEED_STD = [0.229, 0.224, 0.225]


def seed_transform(resize: int = 256, side: int = 224) -> Callable:
    """PIL RGB image -> normalised float tensor [3, side, side], as the seed's torchvision recipe."""
    import torchvision.transforms as T

    return T.Compose([T.Resize(resize), T.CenterCrop(side), T.ToTensor(), T.Normalize(SEED_MEAN, SEED_STD)])


def seed_crop(rgb: np.ndarray, resize: int = 256, side: int = 224) -> np.ndarray:
    """torchvision's Resize + CenterCrop of an RGB uint8 array, as uint8 RGB [side, side, 3]."""
    import torchvision.transforms as T
    from PIL import Image

    crop = T.Compose([T.Resize(resize), T.CenterCrop(side)])(Image.fromarray(rgb))
    return np.asarray(crop, dtype=np.uint8)


def crop_reference(rgb: np.ndarray, crop: str, resize: int = 256, side: int = 224, fill=(0, 0, 0)) -> np.ndarray:
    """torchvision's version of each ``--crop`` mode, uint8 RGB [side, side, 3].

    center: ``Resize(resize)`` + ``CenterCrop(side)``; full: ``Resize((side, side))``; letterbox:
    ``Resize((h, w))`` with the longer side ``side`` (the shorter truncated, as torchvision's sizes are),
    then ``Pad`` with ``fill`` to the square, split as ``CenterCrop`` splits its own padding.
    """
    import torchvision.transforms as T
    from PIL import Image

    if crop == "center":
        return seed_crop(rgb, resize, side)
    height, width = rgb.shape[:2]
    if crop == "full":
        size = (side, side)
    elif width >= height:
        size = (max(int(side * height / width), 1), side)
    else:
        size = (side, max(int(side * width / height), 1))
    top, left = (side - size[0]) // 2, (side - size[1]) // 2
    padding = [left, top, side - size[1] - left, side - size[0] - top]
    picture = T.Compose([T.Resize(size), T.Pad(padding, fill=tuple(fill))])(Image.fromarray(rgb))
    return np.asarray(picture, dtype=np.uint8)


def seed_input(bgr: np.ndarray, transform: Callable):
    """One BGR frame -> the seed's batch of one (the RGB conversion is the seed's, PIL's view of the frame)."""
    from PIL import Image

    return transform(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))[None]


def seed_logits(model, bgr: np.ndarray, transform: Callable) -> np.ndarray:
    """The eager model's logits for one BGR frame."""
    import torch

    with torch.no_grad():
        return model(seed_input(bgr, transform))[0].numpy()


def seed_top1(model, path: Path) -> int:
    """The reference answer for an image file: cv2.imread, then the seed pipeline's argmax."""
    return int(np.argmax(seed_logits(model, cv2.imread(str(path)), seed_transform())))


def decoded_frames(path: Path) -> List[np.ndarray]:
    """Every frame of a video file, in order, as OpenCV decodes it."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames
