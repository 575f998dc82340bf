"""Verify a target's file the way its runtime will feed it, and measure what that runtime's resizing costs.

Each runtime makes the network-sized frame its own way (``PREPROCESSING``):

- ``crop``: torchvision's eval transform (Resize with antialias, CenterCrop): edge-classify, tensorrt;
- ``stretch-nearest``: jetson-inference's ``tensorConvert.cu``: the whole frame stretched to the
  network size, source pixel ``int(x * in_w / out_w)``, no crop, no smoothing;
- ``stretch-bilinear``: DeepStream nvinfer with ``maintain-aspect-ratio=0`` and ``scaling-filter=1``.

The runtime then feeds ``p * a + b`` (``Target.feed``). ``verify_target`` gives the file exactly that
and the eager FP32 model the same pixels normalised the torchvision way, and compares them (top-1 and
the largest difference); separately it counts how often the file's top-1 equals the PyTorch
pipeline's (eager model, torchvision crop): the price of the runtime's resizing, not a failure::

    check = verify_target(Path("m.jetson.onnx"), loaded, reference_images(None), TARGETS["jetson-inference"])
    check.ok, check.top1_agree, check.pytorch_agree, check.images
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .load import LoadedModel
from .targets import Affine, Target

RELATIVE_TOLERANCE = 1e-4  # the graph is FP32: only operation order differs from the eager model


@dataclass(frozen=True)
class TargetCheck:
    """How a target's file compared with the eager model, fed as its runtime feeds it."""

    images: int
    top1_agree: int  # same top-1 as the eager model on the same (runtime-resized) pixels
    max_abs_diff: float  # in the file's output units (probabilities when it ends in a Softmax)
    tolerance: float
    pytorch_agree: int  # same top-1 as the PyTorch pipeline (eager model, torchvision crop)
    metadata_ok: bool = True  # these files carry no edge-classify metadata to check

    @property
    def ok(self) -> bool:
        return self.top1_agree == self.images and self.max_abs_diff <= self.tolerance


def crop(rgb: np.ndarray, resize: int, side: int) -> np.ndarray:
    """torchvision's ``Resize(resize)`` + ``CenterCrop(side)`` of an RGB uint8 image."""
    import torchvision.transforms as T
    from PIL import Image

    transform = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                           T.CenterCrop(side)])
    return np.asarray(transform(Image.fromarray(rgb)), dtype=np.uint8)


def stretch_nearest(rgb: np.ndarray, resize: int, side: int) -> np.ndarray:
    """jetson-inference: output pixel (x, y) takes input pixel (int(x * w / side), int(y * h / side))."""
    del resize  # no crop: the whole frame goes in
    height, width = rgb.shape[:2]
    # The CUDA kernel computes the scale and the product in float32 and truncates.
    xs = (np.arange(side, dtype=np.float32) * np.float32(width / side)).astype(np.int64)
    ys = (np.arange(side, dtype=np.float32) * np.float32(height / side)).astype(np.int64)
    return np.ascontiguousarray(rgb[ys][:, xs])


def stretch_bilinear(rgb: np.ndarray, resize: int, side: int) -> np.ndarray:
    """DeepStream: the whole frame scaled to ``side`` x ``side``, bilinear with pixel centres, no antialias."""
    del resize
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float()  # a writable copy
    out = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                                          antialias=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


PREPROCESSING: Dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "crop": crop,
    "stretch-nearest": stretch_nearest,
    "stretch-bilinear": stretch_bilinear,
}


def runtime_feed(pixels: np.ndarray, feed: Affine) -> np.ndarray:
    """uint8 NHWC pixels -> what the runtime hands the network: float32 NCHW ``p * a + b``."""
    a = np.asarray(feed[0], np.float32).reshape(1, 3, 1, 1)
    b = np.asarray(feed[1], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).astype(np.float32) * a + b)


def eager_outputs(loaded: LoadedModel, pixels: np.ndarray, *, softmax: bool) -> np.ndarray:
    """The eager FP32 model on uint8 NHWC pixels, normalised as torchvision's ToTensor + Normalize do."""
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        out = loaded.model.eval()(x)
        return (torch.softmax(out, 1) if softmax else out).double().numpy()


def verify_target(path: Path, loaded: LoadedModel, images: Sequence[Tuple[str, object]], target: Target) -> TargetCheck:
    """Run ``path`` on ``images`` as ``target``'s runtime would and hold it against the eager model."""
    return verify_fed(path, loaded, images, resize=PREPROCESSING[target.preprocessing],
                      feed=target.feed(loaded.mean, loaded.std) if target.feed else None, softmax=target.softmax)


def verify_fed(path: Path, loaded: LoadedModel, images: Sequence[Tuple[str, object]], *,
               resize: Callable[[np.ndarray, int, int], np.ndarray], feed: Optional[Affine],
               softmax: bool) -> TargetCheck:
    """Hold ``path`` against the eager model on ``images`` resized by ``resize`` (RGB, resize side, input
    side -> uint8 HWC) and fed as ``feed`` (None: the uint8 NHWC pixels themselves); ``softmax`` when the
    file outputs probabilities. Any preprocessing plugs in here, the device's own included."""
    rgbs = [np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8) for _, img in images]
    pixels = np.stack([resize(rgb, loaded.resize_side, loaded.input_side) for rgb in rgbs])
    got = run_onnx(path, pixels if feed is None else runtime_feed(pixels, feed)).astype(np.float64)
    reference = eager_outputs(loaded, pixels, softmax=softmax)
    pytorch = eager_outputs(loaded, np.stack([crop(rgb, loaded.resize_side, loaded.input_side) for rgb in rgbs]),
                            softmax=False)
    tolerance = RELATIVE_TOLERANCE * max(float(np.abs(reference).max()), 1e-6)
    return TargetCheck(
        images=len(rgbs),
        top1_agree=top1_agreement(reference, got, tolerance),
        max_abs_diff=float(np.abs(reference - got).max()),
        tolerance=tolerance,
        pytorch_agree=int(np.sum(got.argmax(1) == pytorch.argmax(1))),
    )


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    """``path`` in onnxruntime on CPU, one image at a time when its batch size is fixed (jetson-inference)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    if isinstance(model_input.shape[0], int):
        outputs: List[np.ndarray] = [session.run(None, {model_input.name: batch[i:i + 1]})[0]
                                     for i in range(len(batch))]
        return np.concatenate(outputs)
    return session.run(None, {model_input.name: batch})[0]


def top1_agreement(reference: np.ndarray, got: np.ndarray, tolerance: float) -> int:
    """Images with the same top-1; a swap between classes the eager model has within ``tolerance`` is a tie."""
    ref_top, got_top = reference.argmax(1), got.argmax(1)
    rows = np.arange(len(reference))
    margin = reference[rows, ref_top] - reference[rows, got_top]
    return int(np.sum((ref_top == got_top) | (margin <= tolerance)))
