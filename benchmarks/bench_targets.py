"""How often each export target's top-1 equals the PyTorch pipeline's, on real photos framed like cameras frame them.

    python benchmarks/bench_targets.py [--arch resnet18]

The model: ``--arch`` with its BatchNorm recalibrated on scikit-image's photos and a nearest-centroid
head, one class per photo (a random-init model gives one class for everything, so no agreement figure
would mean anything). The frames: each photo cut to 4:3 (640x480), 16:9 (1280x720), 1:1 (480x480) and
3:4 (480x640), JPEG-encoded like a camera's. The reference is the seed pipeline on each frame (PIL,
torchvision Resize + CenterCrop + Normalize, eager FP32 torch); each target runs its file from ONE
``edge-export --target all`` run, fed as its runtime feeds it:

- onnxruntime, tensorrt: through edge-classify's own Classifier (OpenCV decode, edge.model.preprocess);
- jetson-inference: the frame stretched to the network size by nearest neighbour, ImageNet-normalised;
- deepstream: the frame stretched by bilinear scaling, 0..255 floats.

Everything runs on the CPU (onnxruntime): this measures the preprocessing and the graph, not a TensorRT
FP16 engine, whose own rounding comes on top.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The seed pipeline (tests/reference.py) and fit_photo_model (conftest): shared with the tests.
sys.path.insert(0, str(REPO / "tests"))

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "cat",
          "retina", "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text", "cell")
FRAMINGS = {"4:3": (640, 480), "16:9": (1280, 720), "1:1": (480, 480), "3:4": (480, 640)}


def load_photos() -> Dict[str, np.ndarray]:
    from skimage import data

    photos = {}
    for name in PHOTOS:
        image = getattr(data, name)()
        photos[name] = np.ascontiguousarray(np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3])
    return photos


def frame(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The largest centred ``width:height`` window of ``rgb``, scaled to ``width`` x ``height`` (a camera's frame)."""
    h, w = rgb.shape[:2]
    scale = min(w / width, h / height)
    cw, ch = int(width * scale), int(height * scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    window = rgb[top:top + ch, left:left + cw]
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)


def write_frames(photos: Dict[str, np.ndarray], folder: Path) -> List[Tuple[str, str, Path]]:
    """``(photo, framing, jpeg path)`` for every photo and framing."""
    frames = []
    for name, rgb in photos.items():
        for framing, (width, height) in FRAMINGS.items():
            path = folder / f"{name}-{framing.replace(':', 'x')}.jpg"
            cv2.imwrite(str(path), np.ascontiguousarray(frame(rgb, width, height)[..., ::-1]),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            frames.append((name, framing, path))
    return frames


def seed_top1(model, bgrs: List[np.ndarray]) -> np.ndarray:
    from reference import seed_logits, seed_transform

    transform = seed_transform()
    return np.array([int(np.argmax(seed_logits(model, bgr, transform))) for bgr in bgrs])


def edge_classify_top1(path: Path, bgrs: List[np.ndarray]) -> np.ndarray:
    from edge.model.classify import Classifier

    classifier = Classifier.open(path)
    return np.array([classifier.classify(bgr).index for bgr in bgrs])


def runtime_top1(path: Path, bgrs: List[np.ndarray], target_name: str, loaded) -> np.ndarray:
    """The file fed as its runtime feeds it (export.target_verify's DevicePath for that runtime)."""
    from export.target_verify import runtime_device_path
    from export.targets import TARGETS

    device = runtime_device_path(path, TARGETS[target_name], loaded)
    return device.run(np.stack([device.to_input(device.crop(bgr)) for bgr in bgrs])).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    args = parser.parse_args()

    import torch
    from conftest import fit_photo_model

    from export.cli import export_main
    from export.load import LoadedModel

    photos = load_photos()
    model = fit_photo_model(args.arch, list(photos.values()))
    loaded = LoadedModel(model, args.arch, list(photos), 224, 256, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.save(model.state_dict(), folder / "fitted.pth")
        (folder / "labels.txt").write_text("\n".join(photos) + "\n")
        started = time.perf_counter()
        code = export_main(["--arch", args.arch, "--weights", str(folder / "fitted.pth"), "--labels",
                            str(folder / "labels.txt"), "--precision", "fp16", "--target", "all",
                            "--out", str(folder / "m.onnx")])
        export_seconds = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"edge-export failed ({code})")
        frames = write_frames(photos, folder)
        bgrs = [cv2.imread(str(path)) for _, _, path in frames]
        reference = seed_top1(model, bgrs)
        truth = np.array([list(photos).index(name) for name, _, _ in frames])
        results = {
            "seed pipeline (PIL + torchvision + eager torch)": reference,
            "onnxruntime (m.onnx, FP16, edge-classify)": edge_classify_top1(folder / "m.onnx", bgrs),
            "tensorrt (m.tensorrt.onnx, FP32 graph, edge-classify)": edge_classify_top1(
                folder / "m.tensorrt.onnx", bgrs),
            "jetson-inference (m.jetson.onnx, nearest stretch)": runtime_top1(
                folder / "m.jetson.onnx", bgrs, "jetson-inference", loaded),
            "deepstream (m.deepstream.onnx, bilinear stretch)": runtime_top1(
                folder / "m.deepstream.onnx", bgrs, "deepstream", loaded),
        }
    framings = list(FRAMINGS)
    by_framing = {f: np.array([fr == f for _, fr, _ in frames]) for f in framings}
    print(f"{args.arch} fitted to {len(photos)} scikit-image photos (one class each); {len(frames)} JPEG frames "
          f"({', '.join(framings)}); one edge-export --target all run: {export_seconds:.1f} s; torch "
          f"{torch.__version__}, OpenCV {cv2.__version__}, CPU\n")
    header = "| target | same top-1 as the seed pipeline | " + " | ".join(framings) + " | right photo |"
    print(header)
    print("|---|---:|" + "---:|" * len(framings) + "---:|")
    for name, top1 in results.items():
        same = top1 == reference
        cells = [f"{int(same[mask].sum())}/{int(mask.sum())}" for mask in by_framing.values()]
        print(f"| {name} | {int(same.sum())}/{len(same)} ({100 * same.mean():.0f}%) | " + " | ".join(cells)
              + f" | {int((top1 == truth).sum())}/{len(truth)} |")
    print("\nframes whose top-1 differs from the seed pipeline's:")
    for name, top1 in results.items():
        differ = [frames[i][2].stem for i in np.flatnonzero(top1 != reference)]
        if differ:
            print(f"  {name.split(' (')[0]}: {', '.join(differ)}")


if __name__ == "__main__":
    main()
