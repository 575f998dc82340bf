"""Shared fixtures: real photos from scikit-image and small models that tell those photos apart.

A randomly initialised torchvision model gives nearly the same logits for every photo (its top-1 is
one class for all of them), so a parity check against it could never fail. ``fit_photo_model``
builds a real architecture, recalibrates its BatchNorm statistics on the photos and sets its head to
a nearest-centroid classifier, so each photo gets its own class with a clear margin.
"""

import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest

PHOTO_ARCH = "resnet18"
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field")


def pytest_collection_modifyitems(config, items) -> None:
    """Without CI's ``$EDGE_DEVICE_BUNDLE``, tests/device builds its bundle here (several exports: a minute on 2
    cores), so the device tests that use it are ``slow`` on the host: the full suite and the JetPack tiers run them."""
    if os.environ.get("EDGE_DEVICE_BUNDLE"):
        return
    for item in items:
        if "bundle" in getattr(item, "fixturenames", ()) and "device" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.slow)


def load_photos() -> Dict[str, np.ndarray]:
    """Real RGB uint8 photos of assorted sizes and aspect ratios (grayscale ``camera`` made RGB)."""
    from skimage import data

    photos = {}
    for name in PHOTO_NAMES:
        image = getattr(data, name)()
        photos[name] = np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3])
    # A 640x480 frame, the shape of a typical USB camera's.
    photos["frame640"] = np.ascontiguousarray(photos["hubble_deep_field"][100:580, 200:840])
    return photos


@pytest.fixture(scope="session")
def photos() -> Dict[str, np.ndarray]:
    return load_photos()


@pytest.fixture()
def model_file(tmp_path) -> Path:
    """For edge-service's tests: rendering a unit only needs a file to point at (the service loads it)."""
    path = tmp_path / "models" / "mobilenet_v2_fp16.onnx"
    path.parent.mkdir()
    path.write_bytes(b"onnx")
    return path


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, photos) -> Path:
    """The photos as JPEG files (as a camera or a phone would save them), decoded later by OpenCV."""
    import cv2

    folder = tmp_path_factory.mktemp("photos")
    for name, rgb in photos.items():
        assert cv2.imwrite(str(folder / f"{name}.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def fit_photo_model(arch: str, photos: Sequence[np.ndarray], *, seed: int = 0, input_side: int = 224,
                    resize_side: int = 256):
    """A ``len(photos)``-class eager model (eval mode) whose class i is photo i, with a clear margin."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from export.zoo import IMAGENET_MEAN, IMAGENET_STD, build_model, get_arch, head_of

    torch.manual_seed(seed)
    model = build_model(arch, num_classes=len(photos))
    transform = T.Compose([T.Resize(resize_side), T.CenterCrop(input_side), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    batch = torch.stack([transform(Image.fromarray(p)) for p in photos])
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over this one batch
    head = head_of(model, get_arch(arch))
    features: List[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0].detach()))
    with torch.no_grad():
        model.train()(batch)
        model.eval()(batch)
    hook.remove()
    centred = features[-1] - features[-1].mean(0, keepdim=True)
    weight = torch.nn.functional.normalize(centred, dim=1) * 10.0
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(-(weight @ features[-1].mean(0)))
    return model.eval()


@pytest.fixture(scope="session")
def photo_model(photos):
    """``(model, labels)``: resnet18 that names each photo; the labels are the photo names.

    resnet18, because a random-init mobilenet_v2 is chaotic: a change of half a grey level moves its
    logits by several units, so its top-1 on a JPEG differs from its top-1 on the raw photo.
    """
    names = list(photos)
    return fit_photo_model(PHOTO_ARCH, [photos[n] for n in names]), names


@pytest.fixture(scope="session")
def photo_onnx(tmp_path_factory, photo_model) -> Path:
    """The photo model as an FP32 ONNX artifact."""
    from export.exporter import export_artifact

    model, labels = photo_model
    return export_artifact(model, tmp_path_factory.mktemp("photo-onnx") / "m.onnx", arch=PHOTO_ARCH, labels=labels)


def write_photo_video(path: Path, photos: Dict[str, np.ndarray], names: Sequence[str], frames_each: int) -> Path:
    """A 640x480 MJPG video at 10 fps: ``frames_each`` frames of each photo in ``names``, in order."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    assert writer.isOpened()
    for name in names:
        frame = np.ascontiguousarray(cv2.resize(photos[name], (640, 480), interpolation=cv2.INTER_AREA)[..., ::-1])
        for _ in range(frames_each):
            writer.write(frame)
    writer.release()
    return path
