"""BGR camera frame -> model input, reproducing torchvision's eval transform without PIL or torch.

torchvision's ``Resize(resize)`` on a PIL image is a separable triangle (bilinear) filter whose width
grows with the downscale factor (antialiasing); ``CenterCrop(side)`` then keeps the middle. Plain
``cv2.resize`` is far from it (INTER_LINEAR ignores most input pixels when shrinking; INTER_AREA is a
box filter). Here, for each frame size, we compute once where the crop's pixels sit in the input and
a small prefilter, then per frame:

1. cut the input region the crop needs (the rest of the frame is never touched),
2. when shrinking by 4x or more (HD and 4K frames), average k x k blocks first (``cv2.resize``
   INTER_AREA at an exact integer factor, as PIL's ``reducing_gap`` does), so the steps below work
   on a region of about the same size whatever the frame's,
3. smooth it with the prefilter (``cv2.sepFilter2D``): a kernel fitted by least squares so that
   "block average, prefilter, then linear interpolation" gives the same weights as PIL's triangle
   at every phase (rounded to uint8 when nothing was block-averaged, float otherwise),
4. sample it at PIL's exact pixel centres with ``cv2.warpAffine`` (linear),
5. swap BGR to RGB on the small result.

On real photos this stays within a fraction of a grey level of torchvision on average (see
tests/test_preprocess.py for the bounds) at a fraction of a millisecond per 640x480 frame::

    prep = Preprocessor(spec)                  # spec: edge.model.artifact.ModelSpec
    batch = prep.batch([frame_bgr])            # uint8 [1, 224, 224, 3] RGB, or float32 [1, 3, 224, 224]

The same steps serve the other ``--crop`` modes (``edge.contract.CROP_MODES``), only the geometry differs:
``full`` samples the whole frame onto the square (torchvision's ``Resize((side, side))``: x and y scales
differ), ``letterbox`` the whole frame onto a ``side``-long picture that keeps its aspect (``Resize((h, w))``
with the longer side ``side``), centred on the normalisation's mean colour (it normalises to 0) as
torchvision's ``CenterCrop`` pads a smaller picture. ``Classifier`` cuts a region of interest out of the frame
before all this (:func:`apply_roi`).
"""


from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from edge.contract import CROP_MODES, DEFAULT_CROP, resized_size
from edge.errors import EdgeError
from edge.model.artifact import ModelSpec

_PHASES = 64  # sample offsets per pixel used to fit the prefilter
REDUCING_GAP = 2.0  # block-average first only while the exact filter is left at least this much to shrink
HALVING_BIAS = 0.125  # grey levels that one 2x2 INTER_AREA halving adds on average (it rounds halves up)


@dataclass(frozen=True)
class CropPlan:
    """Where the crop of one frame size lies, and how to resample it (computed once per frame size)."""

    region: Tuple[int, int, int, int]  # y0, y1, x0, x1 of the input pixels the crop needs
    kernel_x: np.ndarray
    kernel_y: np.ndarray
    affine: np.ndarray  # output pixel -> (block-averaged) region coordinates, for WARP_INVERSE_MAP
    side: int
    size: Tuple[int, int]  # height, width of the sampled picture: side x side but with letterbox
    offset: Tuple[int, int]  # top, left of the picture in the side x side input (letterbox: the rest is filled)
    block: int = 1  # the region is averaged in block x block squares first (1: not at all)


class RoiError(EdgeError, ValueError):
    """A region of interest that does not lie inside the frame (one line; edge-classify exits 2)."""


def reduction_block(scale: float) -> int:
    """The block-average factor for a downscale of ``scale``: a power of two, 1 below 2 * REDUCING_GAP.

    Like PIL's ``reducing_gap``: the exact filter still shrinks by REDUCING_GAP to twice that after
    it, so the box's flat weights are a small part of the result (measured on real photos in
    tests/test_preprocess.py), and the cost per frame stops growing with the frame's pixels. Powers
    of two because halving repeatedly is OpenCV's fastest path (3x faster than one 4x4 average).
    """
    block = 1
    while block * 2 * REDUCING_GAP <= scale:
        block *= 2
    return block


def fitted_size(height: int, width: int, side: int) -> Tuple[int, int]:
    """``(height, width)`` with the longer side ``side`` and the aspect kept (truncated, as torchvision's sizes)."""
    if width >= height:
        return max(int(side * height / width), 1), side
    return side, max(int(side * width / height), 1)


def _layout(height: int, width: int, resize: int, side: int,
            crop: str) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """For one ``crop`` mode: the size the frame is resized to, the first resized pixel kept (top, left),
    and the size of the picture kept (the model's square, or letterbox's smaller rectangle in it)."""
    if crop == "center":
        new_h, new_w = resized_size(height, width, resize)
        if new_h < side or new_w < side:
            raise ValueError(f"resize {resize} is smaller than the crop {side}")
        return (new_h, new_w), (int(round((new_h - side) / 2.0)), int(round((new_w - side) / 2.0))), (side, side)
    if crop == "full":
        return (side, side), (0, 0), (side, side)
    check_crop(crop)
    fitted = fitted_size(height, width, side)  # letterbox
    return fitted, (0, 0), fitted


def check_crop(crop: str) -> str:
    """``crop`` if it is one of ``CROP_MODES``, else ValueError."""
    if crop not in CROP_MODES:
        raise ValueError(f"unknown crop mode {crop!r} (one of {', '.join(CROP_MODES)})")
    return crop


@lru_cache(maxsize=32)
def crop_plan(height: int, width: int, resize: int, side: int, crop: str = DEFAULT_CROP) -> CropPlan:
    """The resampling plan for ``height`` x ``width`` frames and a ``crop`` mode (cached: cameras keep their size)."""
    (new_h, new_w), (top, left), (out_h, out_w) = _layout(height, width, resize, side, crop)
    scale_y, scale_x = height / new_h, width / new_w
    # Centre of output pixel 0 in input coordinates (PIL and OpenCV both put pixel centres at +0.5).
    first_y, first_x = (top + 0.5) * scale_y - 0.5, (left + 0.5) * scale_x - 0.5
    block = reduction_block(min(scale_x, scale_y))
    y0, y1 = _block_span(*_span(first_y, scale_y, out_h, height, block), block, height)
    x0, x1 = _block_span(*_span(first_x, scale_x, out_w, width, block), block, width)
    # Block i of the region averages input pixels x0 + block*i .. +block-1: its centre is at
    # x0 + block*i + (block-1)/2, so input coordinate u is (u - x0 - (block-1)/2) / block there.
    shift = (block - 1) / 2.0
    affine = np.array([[scale_x / block, 0.0, (first_x - x0 - shift) / block],
                       [0.0, scale_y / block, (first_y - y0 - shift) / block]], dtype=np.float64)
    return CropPlan((y0, y1, x0, x1), prefilter_kernel(scale_x, block), prefilter_kernel(scale_y, block), affine,
                    side, (out_h, out_w), ((side - out_h) // 2, (side - out_w) // 2), block)


def resize_and_crop(frame_bgr: np.ndarray, resize: int, side: int, crop: str = DEFAULT_CROP,
                    fill: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``Resize(resize)`` + ``CenterCrop(side)`` of a BGR uint8 frame, returned as RGB uint8 ``[side, side, 3]``.

    ``crop``: another mode of ``CROP_MODES``; ``fill``: letterbox's borders, RGB.
    """
    plan = crop_plan(frame_bgr.shape[0], frame_bgr.shape[1], resize, side, crop)
    return place(resample(frame_bgr, plan), plan, fill)


def resample(frame_bgr: np.ndarray, plan: CropPlan) -> np.ndarray:
    """The picture ``plan`` keeps of a BGR uint8 frame, as RGB uint8 ``[height, width, 3]`` (``plan.size``)."""
    y0, y1, x0, x1 = plan.region
    region = frame_bgr[y0:y1, x0:x1]
    halvings = 0
    while plan.block >> halvings > 1:  # at an exact factor of 2, INTER_AREA is a 2x2 average (OpenCV's fast path)
        region = cv2.resize(region, (region.shape[1] // 2, region.shape[0] // 2), interpolation=cv2.INTER_AREA)
        halvings += 1
    if len(plan.kernel_x) > 1 or len(plan.kernel_y) > 1:
        # Without halvings the filtered region is rounded to uint8: 0.05-0.06 grey level more off torchvision
        # on real photos, a quarter of the memory for the sampler, and 25-30% less time in a classify loop (where
        # the model's cache is shared). After halvings it stays float until the end: their rounding adds up.
        # Each halving rounds (sum + 2) >> 2, +1/8 grey level on average: taken back here, for free.
        depth = cv2.CV_32F if halvings else cv2.CV_8U
        region = cv2.sepFilter2D(region, depth, plan.kernel_x, plan.kernel_y, delta=-HALVING_BIAS * halvings,
                                 borderType=cv2.BORDER_REPLICATE)
    height, width = plan.size
    out = cv2.warpAffine(region, plan.affine, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    if out.dtype != np.uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def place(picture: np.ndarray, plan: CropPlan, fill) -> np.ndarray:
    """``picture`` (HWC) where ``plan`` puts it in the model's square, the rest ``fill``; as it is when it fills it."""
    height, width = plan.size
    if height == width == plan.side:
        return picture
    canvas = np.empty((plan.side, plan.side) + picture.shape[2:], picture.dtype)
    canvas[...] = fill
    top, left = plan.offset
    canvas[top:top + height, left:left + width] = picture
    return canvas


def mean_colour(mean: Sequence[float]) -> Tuple[int, ...]:
    """The uint8 RGB colour closest to ``mean``: letterbox's borders for a uint8-input artifact (about 0 normalised)."""
    return tuple(min(max(int(round(255.0 * value)), 0), 255) for value in mean)


def standardise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``ToTensor`` + ``Normalize`` of uint8 HWC RGB, still HWC (float32)."""
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    shift = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    return rgb.astype(np.float32) * scale + shift


def normalise(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``ToTensor`` + ``Normalize``: uint8 HWC RGB -> float32 CHW, for ``--input float`` artifacts."""
    return np.ascontiguousarray(standardise(rgb, mean, std).transpose(2, 0, 1))


def apply_roi(frame: np.ndarray, roi: Optional[Tuple[int, int, int, int]]) -> np.ndarray:
    """``frame[y:y+h, x:x+w]`` for ``roi = (x, y, w, h)`` (a view: nothing copied); the frame itself for None.

    RoiError (a ValueError, one line) unless the region lies wholly inside the frame: a region cut
    short would silently change what the model sees.
    """
    if roi is None:
        return frame
    x, y, w, h = roi
    height, width = frame.shape[:2]
    if min(x, y) < 0 or min(w, h) < 1:
        raise RoiError(f"--roi {x},{y},{w},{h}: x and y must be 0 or more, w and h at least 1")
    beyond = [f"{name} = {end} > {limit}" for name, end, limit in (("x+w", x + w, width), ("y+h", y + h, height))
              if end > limit]
    if beyond:
        raise RoiError(f"--roi {x},{y},{w},{h} is outside the {width}x{height} frame ({', '.join(beyond)})")
    return frame[y:y + h, x:x + w]


class Preprocessor:
    """Frames -> the batch an artifact takes, as its spec says (uint8 NHWC or normalised float NCHW).

    ``crop``: how the frame becomes the model's square, one of ``CROP_MODES`` (``center``: torchvision's).
    """

    def __init__(self, spec: ModelSpec, crop: str = DEFAULT_CROP) -> None:
        self.spec = spec
        self.crop = check_crop(crop)
        self._fill = mean_colour(spec.mean)

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        """One frame -> one model input (no batch axis)."""
        bgr = as_bgr(frame_bgr)
        spec = self.spec
        plan = crop_plan(bgr.shape[0], bgr.shape[1], spec.resize_side, spec.input_side, self.crop)
        picture = resample(bgr, plan)
        if spec.input_kind == "uint8":
            return place(picture, plan, self._fill)
        # Letterbox's borders are placed after normalising, so they are exactly 0 (the mean colour).
        return np.ascontiguousarray(place(standardise(picture, spec.mean, spec.std), plan, 0.0).transpose(2, 0, 1))

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


@lru_cache(maxsize=256)
def prefilter_kernel(scale: float, block: int = 1) -> np.ndarray:
    """The smoothing that makes linear sampling reproduce PIL's antialiased bilinear weights.

    PIL weighs input pixel ``j`` for a sample centred at ``c`` by ``tri((j - c) / scale)``, normalised.
    Averaging ``block`` x ``block`` squares, prefiltering with ``g`` and then interpolating linearly
    weighs block ``t`` by the piecewise-linear ``h`` with ``h(t) = g[t]`` at integers. ``g`` is fitted
    so that ``h`` matches the sum of PIL's normalised weights over each block, at all sub-pixel
    phases (exact at scale 2 and 1 without blocks, within a few percent elsewhere). No prefilter
    when enlarging: PIL then is plain bilinear interpolation.

    The fit is a few hundred rows by at most a dozen columns, solved through its normal equations
    with ``einsum`` (no multi-threaded BLAS call, which under load took up to 0.7 s per new frame size).
    """
    reduced = scale / block
    if reduced <= 1.0:
        return np.ones(1, np.float32)
    radius = int(np.ceil(reduced + (0.5 if block > 1 else 0.0)))
    phases = np.arange(_PHASES) / _PHASES
    taps = np.arange(-radius - 1, radius + 2)
    offsets = taps[None, :] - phases[:, None]  # [phase, tap], in blocks
    system = _linear_rows(offsets.ravel(), radius)
    goal = _block_weights(offsets, scale, block).ravel()
    # A heavy extra row keeps the kernel's sum at 1 (flat areas keep their exact grey level).
    system = np.vstack([system, 1e3 * np.ones(2 * radius + 1)])
    goal = np.append(goal, 1e3)
    normal = np.einsum("ij,ik->jk", system, system)
    kernel = np.linalg.solve(normal, np.einsum("ij,i->j", system, goal))
    return kernel.astype(np.float32)


def _block_weights(offsets: np.ndarray, scale: float, block: int) -> np.ndarray:
    """PIL's normalised triangle weights summed over each block, for blocks at ``offsets`` [phase, tap]."""
    within = np.arange(block) - (block - 1) / 2.0  # input pixels of a block, from its centre
    distance = offsets[..., None] * block + within  # [phase, tap, pixel], in input pixels
    weights = np.clip(1.0 - np.abs(distance) / scale, 0.0, None).sum(-1)
    return weights / weights.sum(1, keepdims=True)


def _linear_rows(offsets: np.ndarray, radius: int) -> np.ndarray:
    """How linear interpolation at each offset mixes the prefiltered taps ``-radius..radius`` (one row each)."""
    rows = np.zeros((len(offsets), 2 * radius + 3))  # one spare column each side, dropped below
    low = np.floor(offsets).astype(int)
    frac = offsets - low
    index = np.arange(len(offsets))
    for tap, weight in ((low, 1.0 - frac), (low + 1, frac)):
        inside = np.abs(tap) <= radius
        rows[index[inside], tap[inside] + radius + 1] += weight[inside]
    return rows[:, 1:-1]


def _span(first: float, scale: float, side: int, limit: int, block: int = 1) -> Tuple[int, int]:
    """The input pixels that samples ``first + i*scale`` (i < side) and their filters reach."""
    reach = int(np.ceil(max(scale, 1.0))) + 2 * block
    start = max(int(np.floor(first)) - reach, 0)
    stop = min(int(np.ceil(first + (side - 1) * scale)) + reach + 1, limit)
    return start, stop


def _block_span(start: int, stop: int, block: int, limit: int) -> Tuple[int, int]:
    """``start:stop`` widened to a whole number of blocks (at the frame's edge, its last partial block dropped)."""
    if block == 1:
        return start, stop
    blocks = -(-(stop - start) // block)
    if start + blocks * block > limit:
        blocks = (limit - start) // block
    return start, start + blocks * block
