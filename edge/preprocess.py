"""BGR camera frame -> model input, reproducing torchvision's eval transform without PIL or torch.

torchvision's ``Resize(resize)`` on a PIL image is a separable triangle (bilinear) filter whose width
grows with the downscale factor (antialiasing); ``CenterCrop(side)`` then keeps the middle. Plain
``cv2.resize`` is far from it (INTER_LINEAR ignores most input pixels when shrinking; INTER_AREA is a
box filter). Here, for each frame size, we compute once where the crop's pixels sit in the input and
a small prefilter, then per frame:

1. cut the input region the crop needs (the rest of the frame is never touched),
2. smooth it with the prefilter (``cv2.sepFilter2D``): a kernel fitted by least squares so that
   "prefilter, then linear interpolation" gives the same weights as PIL's triangle at every phase,
3. sample it at PIL's exact pixel centres with ``cv2.warpAffine`` (linear),
4. swap BGR to RGB on the small result.

On real photos this stays within a fraction of a grey level of torchvision on average (see
tests/test_preprocess.py for the bounds) at a fraction of a millisecond per 640x480 frame::

    prep = Preprocessor(spec)                  # spec: edge.artifact.ModelSpec
    batch = prep.batch([frame_bgr])            # uint8 [1, 224, 224, 3] RGB, or float32 [1, 3, 224, 224]
"""


from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, Tuple

import cv2
import numpy as np

from .artifact import ModelSpec

_PHASES = 64  # sample offsets per pixel used to fit the prefilter


@dataclass(frozen=True)
class CropPlan:
    """Where the crop of one frame size lies, and how to resample it (computed once per frame size)."""

    region: Tuple[int, int, int, int]  # y0, y1, x0, x1 of the input pixels the crop needs
    kernel_x: np.ndarray
    kernel_y: np.ndarray
    affine: np.ndarray  # output pixel -> region coordinates, for warpAffine's WARP_INVERSE_MAP
    side: int


def resized_size(height: int, width: int, resize: int) -> Tuple[int, int]:
    """torchvision ``Resize(int)``: the shorter side becomes ``resize``, the longer keeps the aspect ratio."""
    if width <= height:
        return int(resize * height / width), resize
    return resize, int(resize * width / height)


@lru_cache(maxsize=16)
def crop_plan(height: int, width: int, resize: int, side: int) -> CropPlan:
    """The resampling plan for ``height`` x ``width`` frames (cached: cameras keep their size)."""
    new_h, new_w = resized_size(height, width, resize)
    if new_h < side or new_w < side:
        raise ValueError(f"resize {resize} is smaller than the crop {side}")
    top, left = int(round((new_h - side) / 2.0)), int(round((new_w - side) / 2.0))
    scale_y, scale_x = height / new_h, width / new_w
    # Centre of output pixel 0 in input coordinates (PIL and OpenCV both put pixel centres at +0.5).
    first_y, first_x = (top + 0.5) * scale_y - 0.5, (left + 0.5) * scale_x - 0.5
    y0, y1 = _span(first_y, scale_y, side, height)
    x0, x1 = _span(first_x, scale_x, side, width)
    affine = np.array([[scale_x, 0.0, first_x - x0], [0.0, scale_y, first_y - y0]], dtype=np.float64)
    return CropPlan((y0, y1, x0, x1), prefilter_kernel(scale_x), prefilter_kernel(scale_y), affine, side)


def resize_and_crop(frame_bgr: np.ndarray, resize: int, side: int) -> np.ndarray:
    """``Resize(resize)`` + ``CenterCrop(side)`` of a BGR uint8 frame, returned as RGB uint8 ``[side, side, 3]``."""
    height, width = frame_bgr.shape[:2]
    plan = crop_plan(height, width, resize, side)
    y0, y1, x0, x1 = plan.region
    region = frame_bgr[y0:y1, x0:x1]
    if len(plan.kernel_x) > 1 or len(plan.kernel_y) > 1:
        region = cv2.sepFilter2D(region, -1, plan.kernel_x, plan.kernel_y, borderType=cv2.BORDER_REPLICATE)
    out = cv2.warpAffine(region, plan.affine, (side, side), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def normalise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``ToTensor`` + ``Normalize``: uint8 HWC RGB -> float32 CHW, for ``--input float`` artifacts."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    shift = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    return np.ascontiguousarray((rgb.astype(np.float32) * scale + shift).transpose(2, 0, 1))


class Preprocessor:
    """Frames -> the batch an artifact takes, as its spec says (uint8 NHWC or normalised float NCHW)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        """One frame -> one model input (no batch axis)."""
        rgb = resize_and_crop(as_bgr(frame_bgr), self.spec.resize_side, self.spec.input_side)
        if self.spec.input_kind == "uint8":
            return rgb
        return normalise(rgb, self.spec.mean, self.spec.std)

    def batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Several frames -> one batch (a leading N axis)."""
        return np.stack([self(frame) for frame in frames])


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """A 3-channel uint8 frame, the way ``cv2.imread(IMREAD_COLOR)`` would make it from gray or BGRA."""
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {frame.dtype}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise ValueError(f"expected an image of shape HxW, HxWx3 or HxWx4, got {frame.shape}")


@lru_cache(maxsize=64)
def prefilter_kernel(scale: float) -> np.ndarray:
    """The smoothing that makes linear sampling reproduce PIL's antialiased bilinear weights.

    PIL weighs input pixel ``j`` for a sample centred at ``c`` by ``tri((j - c) / scale)``, normalised.
    Prefiltering with ``g`` and then interpolating linearly weighs it by the piecewise-linear ``h``
    with ``h(k) = g[k]`` at integers. ``g`` is fitted so that ``h`` matches PIL's normalised weights
    over all sub-pixel phases (exact at scale 2 and 1, within a few percent elsewhere). No
    prefilter when enlarging: PIL then is plain bilinear interpolation.
    """
    if scale <= 1.0:
        return np.ones(1, np.float32)
    radius = int(np.ceil(scale))
    rows, targets = [], []
    for phase in np.arange(_PHASES) / _PHASES:
        taps = np.arange(int(np.floor(phase - scale)), int(np.ceil(phase + scale)) + 1)
        weights = np.clip(1.0 - np.abs(taps - phase) / scale, 0.0, None)
        weights /= weights.sum()
        for tap, weight in zip(taps, weights):
            rows.append(_linear_row(tap - phase, radius))
            targets.append(weight)
    system, goal = np.array(rows), np.array(targets)
    # A heavy extra row keeps the kernel's sum at 1 (flat areas keep their exact grey level).
    system = np.vstack([system, 1e3 * np.ones(2 * radius + 1)])
    goal = np.append(goal, 1e3)
    kernel, *_ = np.linalg.lstsq(system, goal, rcond=None)
    return kernel.astype(np.float32)


def _linear_row(offset: float, radius: int) -> np.ndarray:
    """How linear interpolation at ``offset`` mixes the prefiltered taps ``-radius..radius``."""
    row = np.zeros(2 * radius + 1)
    low = int(np.floor(offset))
    frac = offset - low
    for tap, weight in ((low, 1.0 - frac), (low + 1, frac)):
        if -radius <= tap <= radius:
            row[tap + radius] += weight
    return row


def _span(first: float, scale: float, side: int, limit: int) -> Tuple[int, int]:
    """The input pixels that samples ``first + i*scale`` (i < side) and their filters reach."""
    reach = int(np.ceil(max(scale, 1.0))) + 2
    start = max(int(np.floor(first)) - reach, 0)
    stop = min(int(np.ceil(first + (side - 1) * scale)) + reach + 1, limit)
    return start, stop
