"""Before an artifact is called done: run it the way the device will, and hold it against the eager model.

Each verification photo goes down two paths:

- the reference, the seed pipeline a PyTorch user trusts: RGB -> PIL -> torchvision's eval transform
  (Resize + CenterCrop, ToTensor + Normalize) -> the eager FP32 model -> softmax;
- the device path: edge's own preprocessing of the BGR frame (``edge.model.preprocess``) and edge's own
  backend (``edge.model.backends``) loading the written file and its metadata (``edge.model.artifact``).

The artifact is also run on torchvision's own crops, which isolates what the export itself changed
(FP16, the graph) from what the preprocessing changed. The report: top-1 agreement through the device
path, the largest softmax probability difference through the device path and of the artifact alone,
and how far edge's resized crop is from torchvision's in grey levels::

    frames = verification_frames(None)                           # the built-in photos, BGR
    reference = eager_reference(loaded, frames)                  # torchvision's crops and probabilities
    result = verify_path(frames, reference, edge_device_path(Path("m.onnx")), tolerance=0.02)
    result.ok, result.top1_agree, result.max_prob_diff, result.mean_pixel_diff

Another runtime (TensorRT, DeepStream, jetson-inference) plugs in with its own :class:`DevicePath`:
how it crops a frame, how it turns the crop into its input, how it runs a batch.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from edge.contract import IMAGE_SUFFIXES, INPUT_UINT8

from .errors import VerificationError
from .load import LoadedModel

log = logging.getLogger(__name__)

BUILTIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")

# The criterion is on what a user sees: the label (top-1) and its probability, printed to 0.1%.
# - Raw logits were the wrong yardstick: a model with large, input-sensitive logits (recalibrated
#   batch-norm, a scaled-up head) moves them by more than half a unit in FP16 while its softmax, and so
#   every label and score a user reads, does not move (measured: 1e-8).
# - The artifact alone (on torchvision's crops) is held to ``tolerance`` in probability: FP32 differs
#   from eager torch by float rounding only, FP16 by half-precision arithmetic (up to about a point on a
#   briefly trained model). Beyond that the export itself is wrong, and the file is not written.
# - Through the device path, the top-1 must agree. The probabilities are reported, not judged: edge's
#   preprocessing is within a fraction of a grey level of PIL, but an input-sensitive model turns that
#   into several points (6 on the recalibrated mobilenet_v2 of the tests, FP32 as much as FP16), and
#   re-exporting would not change it.
# - A top-1 swap between classes the eager model itself scores within the tie margin is not a
#   disagreement: either answer is PyTorch's, up to noise.
# ``--tolerance`` overrides the default for models whose users accept more (or demand less).
DEFAULT_TOLERANCE = {"fp32": 0.001, "fp16": 0.02}
DEVICE_TIE_MARGIN = 0.05  # the device path: preprocessing noise can move a sensitive model's classes this far


@dataclass(frozen=True)
class DevicePath:
    """How a runtime sees a BGR frame and runs its model: the plug-in point for other targets."""

    crop: Callable[[np.ndarray], np.ndarray]  # BGR uint8 frame -> the RGB uint8 [side, side, 3] the model sees
    to_input: Callable[[np.ndarray], np.ndarray]  # that crop -> one model input, no batch axis
    run: Callable[[np.ndarray], np.ndarray]  # a batch of inputs -> logits [N, classes]
    metadata: Mapping[str, str]  # what the file says about itself, as the runtime read it


@dataclass(frozen=True)
class Reference:
    """The eager torchvision pipeline's view of the verification frames."""

    crops: np.ndarray  # uint8 [N, side, side, 3] RGB: torchvision's Resize + CenterCrop
    probabilities: np.ndarray  # float64 [N, classes]: softmax of the eager FP32 model


@dataclass(frozen=True)
class VerifyResult:
    """How one artifact, run through a device path, compared with the eager pipeline."""

    images: int
    top1_agree: int  # through the device path, ties understood
    max_prob_diff: float  # through the device path
    artifact_prob_diff: float  # the artifact alone, on torchvision's crops
    artifact_top1_agree: int
    mean_pixel_diff: float  # grey levels, device crop against torchvision's
    max_pixel_diff: float
    tolerance: float
    metadata_ok: bool

    @property
    def ok(self) -> bool:
        return (self.metadata_ok and self.top1_agree == self.images and self.artifact_top1_agree == self.images
                and self.artifact_prob_diff <= self.tolerance)


def verification_frames(folder: Optional[Path], extra: Sequence[Path] = ()) -> List[Tuple[str, np.ndarray]]:
    """``(name, BGR uint8 frame)`` pairs: the images under ``folder``, else ``extra``, else the built-in photos.

    Files are decoded by OpenCV, as the device decodes them (and as the seed pipeline read them).
    """
    require_opencv()
    from edge.sources.images import ImageError, read_image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder else list(extra)
    if folder and not paths:
        raise VerificationError(f"no images found under {folder}")
    frames = []
    for path in paths:
        try:
            frames.append((path.name, read_image(path)))
        except ImageError as exc:
            raise VerificationError(f"cannot read verification image {path}: {exc}") from None
    return frames or builtin_frames()


def require_opencv() -> None:
    """The device path needs OpenCV, which the export extra leaves out (one OpenCV per environment: see setup.cfg)."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise VerificationError("edge-export verifies each artifact with edge-classify's own preprocessing, which "
                                "needs OpenCV: pip install '.[opencv-headless]' in the edge-classifier checkout "
                                "(or [desktop])") from None


def builtin_frames() -> List[Tuple[str, np.ndarray]]:
    """scikit-image's photos (people, a cat, a cup, a rocket, a gray camera, a starfield) as BGR frames."""
    from skimage import data

    return [(name, _as_bgr(getattr(data, name)())) for name in BUILTIN_PHOTOS]


def eager_reference(loaded: LoadedModel, frames: Sequence[np.ndarray]) -> Reference:
    """The seed pipeline on ``frames``: BGR -> RGB -> PIL -> eval crop -> ToTensor + Normalize -> eager FP32 model."""
    from PIL import Image

    from .train.data import eval_crop, to_normalised_tensor

    crop = eval_crop(side=loaded.input_side, resize=loaded.resize_side)
    normalise = to_normalised_tensor(mean=loaded.mean, std=loaded.std)
    crops = [crop(Image.fromarray(np.ascontiguousarray(frame[..., ::-1]))) for frame in frames]
    with torch.no_grad():
        logits = loaded.model.eval()(torch.stack([normalise(c) for c in crops])).double()
    probabilities = torch.softmax(logits, dim=1).numpy()
    return Reference(np.stack([np.asarray(c, dtype=np.uint8) for c in crops]), probabilities)


def edge_device_path(path: Path) -> DevicePath:
    """edge-classify's own path for the artifact at ``path``: its backend, its metadata reading, its preprocessing.

    On the CPU: the verdict must not depend on which GPU (if any) the host has, and a TensorRT engine
    build would take minutes for a check of a few photos.
    """
    from edge.model.classify import Classifier
    from edge.model.preprocess import as_bgr, normalise, resize_and_crop

    with _quiet_cpu_fp16_warning():
        classifier = Classifier.open(path, device="cpu")
    spec = classifier.spec

    def to_input(rgb: np.ndarray) -> np.ndarray:
        return rgb if spec.input_kind == INPUT_UINT8 else normalise(rgb, spec.mean, spec.std)

    return DevicePath(crop=lambda frame: resize_and_crop(as_bgr(frame), spec.resize_side, spec.input_side),
                      to_input=to_input, run=classifier.backend.run, metadata=dict(classifier.backend.metadata))


def verify_path(frames: Sequence[np.ndarray], reference: Reference, device: DevicePath, *, tolerance: float,
                expected_meta: Optional[Mapping[str, str]] = None) -> VerifyResult:
    """Run ``frames`` down ``device`` and compare with ``reference`` (see the module's docstring)."""
    crops = np.stack([device.crop(frame) for frame in frames])
    probabilities = _probabilities(device, crops)
    alone = _probabilities(device, reference.crops)
    pixel_diff = _pixel_difference(crops, reference.crops)
    return VerifyResult(
        images=len(frames),
        top1_agree=top1_agreement(reference.probabilities, probabilities, max(tolerance, DEVICE_TIE_MARGIN)),
        max_prob_diff=float(np.abs(reference.probabilities - probabilities).max()),
        artifact_prob_diff=float(np.abs(reference.probabilities - alone).max()),
        artifact_top1_agree=top1_agreement(reference.probabilities, alone, tolerance),
        mean_pixel_diff=float(pixel_diff.mean()),
        max_pixel_diff=float(pixel_diff.max()),
        tolerance=tolerance,
        metadata_ok=expected_meta is None or dict(device.metadata) == dict(expected_meta),
    )


def top1_agreement(reference: np.ndarray, got: np.ndarray, tolerance: float) -> int:
    """Images whose top-1 is the reference's, counting a tie as agreement: when the reference itself
    gives the other pick a probability within ``tolerance`` of its own top-1, either answer is right."""
    ref_top, got_top = reference.argmax(1), got.argmax(1)
    rows = np.arange(len(reference))
    margin = reference[rows, ref_top] - reference[rows, got_top]
    return int(np.sum((ref_top == got_top) | (margin <= tolerance)))


def default_tolerance(precision: str) -> float:
    return DEFAULT_TOLERANCE[precision]


def _probabilities(device: DevicePath, crops: np.ndarray) -> np.ndarray:
    logits = device.run(np.stack([device.to_input(crop) for crop in crops]))
    return _softmax(np.asarray(logits, dtype=np.float64))


def _pixel_difference(crops: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-pixel |difference| in grey levels; a crop of another size counts as as far apart as can be."""
    if crops.shape != reference.shape:
        return np.full(1, 255, np.int16)
    return np.abs(crops.astype(np.int16) - reference.astype(np.int16))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@contextlib.contextmanager
def _quiet_cpu_fp16_warning() -> Iterator[None]:
    """The TorchScript backend warns that FP16 is slow on a CPU: true on a device, noise in a check we run on one."""
    logger = logging.getLogger("edge.model.backends.torchscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _as_bgr(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8) if array.dtype.kind == "f" else array.astype(np.uint8)
    return np.ascontiguousarray(array[..., 2::-1])

