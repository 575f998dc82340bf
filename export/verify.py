"""Hold a freshly written artifact against the eager FP32 model on real photos before calling it done.

The eager model gets torchvision's eval transform (Resize, CenterCrop, ToTensor, Normalize) of each
photo; the artifact gets what a device feeds it: the same resized and cropped pixels as uint8 NHWC
(or the normalised float tensor for ``--input float``). Agreement is the top-1 class and the largest
logit difference, judged against a tolerance scaled to the size of the logits::

    images = reference_images(None)                     # the built-in photos
    result = verify_artifact(Path("m.onnx"), loaded, images)
    result.ok, result.top1_agree, result.max_abs_diff
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .load import LoadedModel
from .metadata import TORCHSCRIPT_METADATA_FILE
from .exporter import quiet_torch_export

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Largest logit difference allowed, as a fraction of the largest eager logit magnitude.
RELATIVE_TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}
BUILTIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")


@dataclass(frozen=True)
class VerifyResult:
    """How one artifact compared with the eager model."""

    images: int
    top1_agree: int
    max_abs_diff: float
    tolerance: float
    metadata_ok: bool

    @property
    def ok(self) -> bool:
        return self.metadata_ok and self.top1_agree == self.images and self.max_abs_diff <= self.tolerance


def reference_images(folder: Optional[Path], extra: Sequence[Path] = ()) -> List[Tuple[str, "object"]]:
    """``(name, PIL RGB image)`` pairs: the files under ``folder``, else ``extra``, else the built-in photos."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder else list(extra)
    if folder and not paths:
        raise ValueError(f"no images found under {folder}")
    if paths:
        return [(p.name, _open_rgb(p)) for p in paths]
    from skimage import data

    return [(name, Image.fromarray(_as_rgb(getattr(data, name)()))) for name in BUILTIN_PHOTOS]


def verify_artifact(path: Path, loaded: LoadedModel, images: Sequence[Tuple[str, "object"]],
                    expected_meta: Dict[str, str]) -> VerifyResult:
    """Reload ``path`` the way a device would and compare it with ``loaded.model`` on ``images``."""
    run, meta = _reload(path)
    input_kind = expected_meta["input"]
    pixels, normalised = _prepare(loaded, [img for _, img in images])
    with torch.no_grad():
        reference = loaded.model.eval()(torch.from_numpy(normalised)).numpy().astype(np.float64)
    got = run(pixels if input_kind == "uint8" else normalised).astype(np.float64)
    tolerance = RELATIVE_TOLERANCE[expected_meta["precision"]] * max(float(np.abs(reference).max()), 1e-6)
    return VerifyResult(
        images=len(images),
        top1_agree=_top1_agreement(reference, got, tolerance),
        max_abs_diff=float(np.abs(reference - got).max()),
        tolerance=tolerance,
        metadata_ok=meta == dict(expected_meta),
    )


def _top1_agreement(reference: np.ndarray, got: np.ndarray, tolerance: float) -> int:
    """Count images with the same top-1; a swap between classes the eager model itself has within
    ``tolerance`` of each other is a tie, not a disagreement."""
    ref_top, got_top = reference.argmax(1), got.argmax(1)
    rows = np.arange(len(reference))
    margin = reference[rows, ref_top] - reference[rows, got_top]
    return int(np.sum((ref_top == got_top) | (margin <= tolerance)))


def _prepare(loaded: LoadedModel, images: Sequence["object"]) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC pixels after Resize+CenterCrop, and the same normalised to float NCHW."""
    import torchvision.transforms as T

    crop = T.Compose([T.Resize(loaded.resize_side, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                      T.CenterCrop(loaded.input_side)])
    normalise = T.Compose([T.ToTensor(), T.Normalize(loaded.mean, loaded.std)])
    cropped = [crop(img) for img in images]
    pixels = np.stack([np.asarray(c, dtype=np.uint8) for c in cropped])
    normalised = torch.stack([normalise(c) for c in cropped]).numpy()
    return pixels, normalised


def _reload(path: Path):
    """A function running the artifact on a batch, and the metadata read back from the file."""
    if path.suffix.lower() == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda batch: session.run(None, {name: batch})[0]), dict(session.get_modelmeta().custom_metadata_map)
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    with quiet_torch_export():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_METADATA_FILE] or "{}")

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).float().numpy()

    return run, meta


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read verification image {path}: {exc}") from None


def _as_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8) if array.dtype.kind == "f" else array.astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])
