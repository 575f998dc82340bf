"""Verify a runtime target's file the way its runtime feeds it, and measure what that runtime's resizing costs.

Each runtime makes the network-sized frame its own way (``PREPROCESSING``):

- ``stretch-nearest``: jetson-inference's ``tensorConvert.cu``: the whole frame stretched to the
  network size, source pixel ``int(x * in_w / out_w)``, no crop, no smoothing;
- ``stretch-bilinear``: DeepStream nvinfer with ``maintain-aspect-ratio=0`` and ``scaling-filter=1``.

(edge-classify's own path, for the self-describing targets, is ``export.verify.edge_device_path``.)
The runtime then feeds ``p * a + b`` (``Target.feed``). ``runtime_device_path`` packs all that as an
``export.verify.DevicePath``, and ``verify_runtime`` runs it twice through ``export.verify.verify_path``:

- against the eager model on the runtime's OWN pixels: judged (top-1, probabilities within tolerance);
- against the PyTorch pipeline (torchvision's crop, eager model): reported, not judged. Its top-1
  agreement is the price of the runtime's resizing (``pytorch_agree``); its "artifact alone" part (the
  file fed torchvision's crops the runtime's way) is a second, judged check of the graph::

    frames = [f for _, f in verification_frames(None)]
    check = verify_runtime(frames, eager_reference(loaded, frames), loaded,
                           runtime_device_path(Path("m.jetson.onnx"), TARGETS["jetson-inference"], loaded),
                           tolerance=0.001)
    check.ok, check.top1_agree, check.pytorch_agree, check.images
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

from .errors import UsageError
from .load import LoadedModel
from .targets import Affine, Target
from .verify import DevicePath, Reference, VerifyResult, verify_path


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
    "stretch-nearest": stretch_nearest,
    "stretch-bilinear": stretch_bilinear,
}


@dataclass(frozen=True)
class RuntimeCheck:
    """A runtime target's file against the eager model on its runtime's pixels (``own``, judged) and
    against the PyTorch pipeline (``pipeline``: top-1 reported, the graph alone judged)."""

    own: VerifyResult
    pipeline: VerifyResult

    @property
    def ok(self) -> bool:
        graph_ok = (self.pipeline.artifact_top1_agree == self.pipeline.images
                    and self.pipeline.artifact_prob_diff <= self.pipeline.tolerance)
        return self.own.ok and graph_ok

    # The columns of edge-export's table, as export.verify.VerifyResult names them.
    images = property(lambda self: self.own.images)
    top1_agree = property(lambda self: self.own.top1_agree)
    max_prob_diff = property(lambda self: self.own.max_prob_diff)
    artifact_prob_diff = property(lambda self: max(self.own.artifact_prob_diff, self.pipeline.artifact_prob_diff))
    tolerance = property(lambda self: self.own.tolerance)
    mean_pixel_diff = property(lambda self: self.pipeline.mean_pixel_diff)  # the runtime's frame vs torchvision's
    max_pixel_diff = property(lambda self: self.pipeline.max_pixel_diff)
    metadata_ok = property(lambda self: True)  # these files carry no edge-classify metadata to check
    pytorch_agree = property(lambda self: self.pipeline.top1_agree)


def runtime_feed(pixels: np.ndarray, feed: Affine) -> np.ndarray:
    """uint8 NHWC pixels -> what the runtime hands the network: float32 NCHW ``p * a + b``."""
    a = np.asarray(feed[0], np.float32).reshape(1, 3, 1, 1)
    b = np.asarray(feed[1], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).astype(np.float32) * a + b)


def runtime_device_path(path: Path, target: Target, loaded: LoadedModel) -> DevicePath:
    """``target``'s runtime as a ``DevicePath``: its resizing of a BGR frame, its feed, the file in onnxruntime."""
    if target.preprocessing not in PREPROCESSING or target.feed is None:
        raise UsageError(f"the {target.name} target runs through edge-classify's own path, not a runtime's")
    import onnxruntime as ort

    resize = PREPROCESSING[target.preprocessing]
    feed = target.feed(loaded.mean, loaded.std)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        out = run_session(session, batch)
        if not target.softmax:
            return out
        with np.errstate(divide="ignore"):
            return np.log(out.astype(np.float64))  # logits whose softmax is these probabilities again

    return DevicePath(crop=lambda frame: resize(np.ascontiguousarray(frame[..., ::-1]), loaded.resize_side,
                                                loaded.input_side),
                      to_input=lambda crop: runtime_feed(crop[None], feed)[0], run=run,
                      metadata=dict(session.get_modelmeta().custom_metadata_map))


def runtime_reference(loaded: LoadedModel, frames: Sequence[np.ndarray], device: DevicePath) -> Reference:
    """The eager FP32 model on the runtime's own pixels, normalised as torchvision's ToTensor + Normalize do."""
    crops = np.stack([device.crop(frame) for frame in frames])
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        probabilities = torch.softmax(loaded.model.eval()(x).double(), dim=1).numpy()
    return Reference(crops, probabilities)


def verify_runtime(frames: Sequence[np.ndarray], reference: Reference, loaded: LoadedModel, device: DevicePath, *,
                   tolerance: float) -> RuntimeCheck:
    """Hold the runtime's path against the eager model on its own pixels, and against ``reference`` (PyTorch's)."""
    own = verify_path(frames, runtime_reference(loaded, frames, device), device, tolerance=tolerance)
    return RuntimeCheck(own=own, pipeline=verify_path(frames, reference, device, tolerance=tolerance))


def run_session(session, batch: np.ndarray) -> np.ndarray:
    """``batch`` through an onnxruntime session, one image at a time when its batch size is fixed (jetson-inference)."""
    model_input = session.get_inputs()[0]
    if isinstance(model_input.shape[0], int):
        outputs: List[np.ndarray] = [session.run(None, {model_input.name: batch[i:i + 1]})[0]
                                     for i in range(len(batch))]
        return np.concatenate(outputs)
    return session.run(None, {model_input.name: batch})[0]
