"""What each ``--crop`` mode costs: parity with its torchvision reference, agreement with center's, time.

    python benchmarks/bench_crop.py [--rounds 200] [--markdown]

For ``center`` (torchvision's eval transform, the default), ``full`` (the whole frame squeezed to the
square: ``Resize((224, 224))``) and ``letterbox`` (the whole frame fitted in, borders the mean colour:
``Resize`` of the longer side to 224, then ``Pad``), with tests/reference.py's ``crop_reference`` as
torchvision's version of each:

1. what the model sees of a 1280x720 frame (the share of its width and height, and of the model's input
   the picture fills);
2. parity: edge's preprocessing against the mode's torchvision reference on scikit-image's photos at
   their own size, at 1280x720 and at 3840x2160 (|difference| in grey levels: the mean over the photos,
   the worst photo's mean, the largest single value);
3. top-1: a resnet18 fitted to the photos (tests/conftest.py's ``fit_photo_model``: class i is photo i,
   fitted on their center crops), exported to ONNX FP32, classifying frames made from the photos in
   16:9 (1280x720) and 4:3 (640x480) shapes: each photo cropped to cover the frame, and fitted inside it
   with the rest mirrored (centred, and against the left edge). Per mode: how often edge's top-1 is the
   mode's own torchvision reference's (parity), how often it is the center reference's (what leaving
   torchvision's transform costs: the model was made with center crops), and how often it names the photo;
4. the median milliseconds of edge's preprocessing of one 1280x720 BGR frame (uint8-input model).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

MODES = ("center", "full", "letterbox")
RESIZE, SIDE = 256, 224
PARITY_SIZES = (None, (1280, 720), (3840, 2160))  # None: the photo's own size
FRAME_SHAPES = ((1280, 720), (640, 480))  # 16:9, 4:3


def cover(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` scaled to cover ``width`` x ``height``, its middle kept (the photo cropped to the frame's shape)."""
    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    size = (max(int(np.ceil(w * scale)), width), max(int(np.ceil(h * scale)), height))
    scaled = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    return np.ascontiguousarray(scaled[top:top + height, left:left + width])


def inside(rgb: np.ndarray, width: int, height: int, centred: bool) -> np.ndarray:
    """``rgb`` scaled to fit inside ``width`` x ``height`` (centred, or against the left edge), the rest mirrored."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    size = (min(int(round(w * scale)), width), min(int(round(h * scale)), height))
    scaled = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    spare_x, spare_y = width - size[0], height - size[1]
    left = spare_x // 2 if centred else 0
    top = spare_y // 2
    return cv2.copyMakeBorder(scaled, top, spare_y - top, left, spare_x - left, cv2.BORDER_REFLECT)


def frames_of(photos: Dict[str, np.ndarray]) -> List[Tuple[str, np.ndarray]]:
    """``(photo name, RGB frame)``: each photo covering, and inside (centred, left), each frame shape."""
    frames = []
    for name, rgb in photos.items():
        for width, height in FRAME_SHAPES:
            frames.append((name, cover(rgb, width, height)))
            frames.append((name, inside(rgb, width, height, True)))
            frames.append((name, inside(rgb, width, height, False)))
    return frames


def kept(mode: str, width: int = 1280, height: int = 720) -> str:
    """What the model sees of a ``width`` x ``height`` frame, from the mode's resampling plan."""
    from edge.model.preprocess import crop_plan, resized_size

    if mode == "center":
        new_h, new_w = resized_size(height, width, RESIZE)
        return (f"{SIDE}/{new_w} of the width ({SIDE / new_w:.0%}), {SIDE}/{new_h} of the height "
                f"({SIDE / new_h:.0%}): {SIDE * SIDE / (new_w * new_h):.0%} of the frame")
    plan = crop_plan(height, width, RESIZE, SIDE, mode)
    if mode == "full":
        return f"all, x squeezed {(width / SIDE) / (height / SIDE):.2f}x more than y"
    return f"all, as {plan.size[1]}x{plan.size[0]}: {plan.size[0] * plan.size[1] / SIDE ** 2:.0%} of the input"


def parity(photos: Dict[str, np.ndarray], mode: str, fill: Tuple[int, ...]) -> Tuple[float, float, int]:
    """Mean over the photos of the mean |difference|, the worst photo's mean, the largest difference."""
    from reference import crop_reference

    from edge.model.preprocess import resize_and_crop

    means, worst = [], 0
    for size in PARITY_SIZES:
        for rgb in photos.values():
            frame = rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC)
            ours = resize_and_crop(np.ascontiguousarray(frame[..., ::-1]), RESIZE, SIDE, mode, fill)
            diff = np.abs(ours.astype(int) - crop_reference(frame, mode, RESIZE, SIDE, fill).astype(int))
            means.append(float(diff.mean()))
            worst = max(worst, int(diff.max()))
    return statistics.mean(means), max(means), worst


def fitted_model(photos: Dict[str, np.ndarray], folder: Path) -> Path:
    """tests/conftest.py's photo model, as an ONNX FP32 artifact (what its ``photo_onnx`` fixture makes)."""
    from conftest import PHOTO_ARCH, fit_photo_model
    from export.exporter import export_artifact

    names = list(photos)
    model = fit_photo_model(PHOTO_ARCH, [photos[n] for n in names])
    return export_artifact(model, folder / "photos.onnx", arch=PHOTO_ARCH, labels=names)


def agreement(model: Path, photos: Dict[str, np.ndarray], fill: Tuple[int, ...]) -> Dict[str, Tuple[int, int, int]]:
    """Per mode: top-1 agreeing with the mode's own reference, with center's reference, naming the photo."""
    from reference import crop_reference

    from edge.model.classify import Classifier

    frames = frames_of(photos)
    classifiers = {mode: Classifier.open(model, device="cpu", topk=1, crop=mode) for mode in MODES}
    backend = classifiers["center"].backend
    names = list(classifiers["center"].spec.labels)

    def reference_top1(rgb: np.ndarray, mode: str) -> int:
        return int(np.argmax(backend.run(crop_reference(rgb, mode, RESIZE, SIDE, fill)[None])[0]))

    counts = {}
    for mode, classifier in classifiers.items():
        own = center = named = 0
        for name, rgb in frames:
            top1 = classifier.classify(np.ascontiguousarray(rgb[..., ::-1])).index
            own += top1 == reference_top1(rgb, mode)
            center += top1 == reference_top1(rgb, "center")
            named += top1 == names.index(name)
        counts[mode] = (own, center, named)
    return counts


def preprocess_ms(photos: Dict[str, np.ndarray], rounds: int) -> Dict[str, float]:
    """Median ms of one 1280x720 frame through ``Preprocessor`` (uint8 input), per mode, modes taking turns."""
    from edge.model.artifact import ModelSpec
    from edge.model.preprocess import Preprocessor

    spec = ModelSpec(labels=("a",), input_side=SIDE, resize_side=RESIZE)
    frame = np.ascontiguousarray(cover(photos["coffee"], 1280, 720)[..., ::-1])
    preprocessors = {mode: Preprocessor(spec, mode) for mode in MODES}
    times: Dict[str, List[float]] = {mode: [] for mode in MODES}
    for mode, prep in preprocessors.items():
        prep(frame)  # the plan and its kernels, once per frame size
    for _ in range(rounds):
        for mode, prep in preprocessors.items():
            started = time.perf_counter()
            prep(frame)
            times[mode].append((time.perf_counter() - started) * 1e3)
    return {mode: statistics.median(values) for mode, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed preprocessings per mode (default 200)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/classify.md)")
    args = parser.parse_args()
    from conftest import load_photos

    from edge.contract import IMAGENET_MEAN
    from edge.model.preprocess import mean_colour

    photos = load_photos()
    fill = mean_colour(IMAGENET_MEAN)
    with tempfile.TemporaryDirectory() as folder:
        counts = agreement(fitted_model(photos, Path(folder)), photos, fill)
    frames = len(frames_of(photos))
    ms = preprocess_ms(photos, args.rounds)
    header = ["--crop", "what the model sees of 1280x720", "vs torchvision: mean / worst photo / max",
              "top-1 = own reference", "top-1 = center reference", "top-1 names the photo",
              "ms per 1280x720"]
    rows = []
    for mode in MODES:
        mean, worst_mean, worst = parity(photos, mode, fill)
        own, center, named = counts[mode]
        shares = [f"{count}/{frames} ({count / frames:.0%})" for count in (own, center, named)]
        rows.append([mode, kept(mode), f"{mean:.2f} / {worst_mean:.2f} / {worst}", *shares, f"{ms[mode]:.2f}"])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    for row in [header] + rows:
        print("  ".join(row))


if __name__ == "__main__":
    main()
