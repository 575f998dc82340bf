"""The GPU paths, where torch sees a CUDA GPU: edge-classify's TorchScript backend and edge-train on it.

    python benchmarks/bench_cuda.py [--rounds 20] [--epochs 2]

A Jetson runs the model on its GPU; CI and the development machines have none, so this script is run
by hand on a machine that has one. It prints three tables:
1. edge-classify's classify step (our preprocessing + TorchScript on CUDA, FP32 and FP16) against the
   seed pipeline with its eager FP32 model on the same GPU, per stage, on real photos at camera sizes,
   with top-1 agreement (a resnet18 fitted to the photos, so its top-1 means something);
2. the same for mobilenet_v2 (the default architecture; random weights: speed only);
3. edge-train --device cuda on scikit-learn's digits (benchmarks/bench_train.py's folder): seconds per
   epoch and validation accuracy.
Also which onnxruntime providers exist here (the CUDA/TensorRT ones come with onnxruntime-gpu).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

SIZES = ((640, 480), (1920, 1080))  # a USB camera frame, and what a CSI camera gives at 1080p


def load_rgb_photos(folder: Optional[Path]) -> Dict[str, np.ndarray]:
    """scikit-image's photos (tests/conftest.py), or every image in ``folder`` (for a machine without them)."""
    if folder is None:
        from conftest import load_photos

        return load_photos()
    return {path.stem: cv2.imread(str(path))[..., ::-1].copy() for path in sorted(folder.iterdir())
            if path.suffix.lower() in (".png", ".jpg", ".jpeg")}


def camera_frames(photos: Dict[str, np.ndarray], folder: Path) -> List[Path]:
    """The photos resized to camera frame sizes, saved as JPEG (quality 90)."""
    paths = []
    for name, rgb in photos.items():
        for width, height in SIZES:
            frame = cv2.resize(rgb[..., ::-1], (width, height), interpolation=cv2.INTER_AREA)
            path = folder / f"{name}_{width}x{height}.jpg"
            cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(path)
    return paths


def timed_ms(run: Callable[[], object]) -> float:
    """Milliseconds of ``run()``, with the GPU's queue (if any) drained before and after."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    started = time.perf_counter()
    run()
    sync()
    return (time.perf_counter() - started) * 1e3


def seed_stages(model, frames: Sequence[Path], device: str) -> Dict[str, object]:
    """The seed pipeline with its eager FP32 model on ``device``: per-stage medians and its top-1s."""
    import torch
    from PIL import Image
    from reference import seed_transform

    transform = seed_transform()
    stages: Dict[str, List[float]] = {"decode": [], "preprocess": [], "infer": []}
    top1 = []
    for path in frames:
        box = {}
        stages["decode"].append(timed_ms(lambda: box.update(bgr=cv2.imread(str(path)))))
        stages["preprocess"].append(timed_ms(lambda: box.update(x=transform(Image.fromarray(
            cv2.cvtColor(box["bgr"], cv2.COLOR_BGR2RGB)))[None].to(device))))
        with torch.no_grad():
            stages["infer"].append(timed_ms(lambda: box.update(y=int(model(box["x"]).argmax()))))
        top1.append(box["y"])
    return {"ms": {k: statistics.median(v) for k, v in stages.items()}, "top1": top1}


def our_stages(classifier, frames: Sequence[Path]) -> Dict[str, object]:
    """edge-classify's classify step on the GPU: per-stage medians and its top-1s."""
    from edge.sources.images import read_image

    stages: Dict[str, List[float]] = {"decode": [], "preprocess": [], "infer": []}
    top1 = []
    for path in frames:
        box = {}
        stages["decode"].append(timed_ms(lambda: box.update(bgr=read_image(path))))
        box["pred"] = classifier.classify(box["bgr"])
        for stage in ("preprocess", "infer"):
            stages[stage].append(box["pred"].ms[stage])
        top1.append(box["pred"].index)
    return {"ms": {k: statistics.median(v) for k, v in stages.items()}, "top1": top1}


def compare(title: str, model, artifacts: Dict[str, Path], frames: Sequence[Path], rounds: int, device: str,
            *, agreement: bool = True) -> None:
    """One table: the seed on ``device``, then each artifact through edge's classify step on it.

    ``agreement``: whether top-1 against the seed means anything (not for random weights, whose logits
    are nearly equal for every class).
    """
    from edge.model.classify import Classifier

    model = model.to(device).eval()
    rows = []
    seed_runs = [seed_stages(model, frames, device) for _ in range(rounds)]
    rows.append((f"seed (PIL + torchvision + eager FP32, {device})", seed_runs, seed_runs[0]["top1"]))
    for name, path in artifacts.items():
        classifier = Classifier.open(path, backend="torchscript", device=device, topk=1)
        assert classifier.backend.provider == device, classifier.backend.provider
        runs = [our_stages(classifier, frames) for _ in range(rounds)]
        rows.append((f"edge-classify, {name} TorchScript, {device}", runs, runs[0]["top1"]))
    reference = rows[0][2]
    print(f"\n{title}: {len(frames)} JPEG frames ({', '.join(f'{w}x{h}' for w, h in SIZES)}), "
          f"median of {rounds} rounds, ms per frame")
    print("| pipeline | decode | preprocess | infer | total | top-1 = seed |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, runs, top1 in rows:
        ms = {k: statistics.median(r["ms"][k] for r in runs) for k in ("decode", "preprocess", "infer")}
        agree = f"{sum(a == b for a, b in zip(top1, reference))}/{len(reference)}" if agreement else "-"
        print(f"| {label} | {ms['decode']:.2f} | {ms['preprocess']:.2f} | {ms['infer']:.2f} | "
              f"{sum(ms.values()):.2f} | {agree} |")


def train_on(device: str, epochs: int, folder: Path) -> None:
    """edge-train --device DEVICE on the digits folder: seconds per epoch and val accuracy."""
    from bench_train import make_digits

    data = make_digits(folder / "digits", 64)
    out = folder / "runs" / "digits.pt"
    command = [sys.executable, "-m", "export.train", "--data", str(data), "--out", str(out), "--weights", "none",
               "--image-size", "64", "--augment", "none", "--lr", "0.01", "--epochs", str(epochs),
               "--device", device, "--workers", "4"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    seconds = time.perf_counter() - started
    print(f"\nedge-train --device {device}, mobilenet_v2 from scratch at 64 px on digits, {epochs} epochs: "
          f"exit {done.returncode}, {seconds:.1f} s in all")
    if done.returncode != 0:
        print(done.stderr[-2000:])
        return
    metrics = json.loads(out.with_name("digits.metrics.json").read_text())
    print("| epoch | seconds | train loss | val accuracy |")
    print("|---:|---:|---:|---:|")
    for row in metrics["epochs"]:
        print(f"| {row['epoch']} | {row['seconds']:.1f} | {row['train_loss']:.3f} | {row['val_acc']:.3f} |")


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu only to try the script out where there is no GPU")
    parser.add_argument("--photos", type=Path, help="a folder of photos to use instead of scikit-image's")
    args = parser.parse_args(argv)
    import onnxruntime
    import torch

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__} with "
          f"{', '.join(onnxruntime.get_available_providers())}, OpenCV {cv2.__version__}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch sees no CUDA GPU here: nothing to measure (--device cpu tries the script out)")
        return 0
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    from conftest import PHOTO_ARCH, fit_photo_model
    from export.exporter import export_artifact
    from export.zoo import build_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = load_rgb_photos(args.photos)
        frames = camera_frames(photos, folder)
        names = list(photos)
        fitted = fit_photo_model(PHOTO_ARCH, [photos[n] for n in names])
        fitted_artifacts = {p: export_artifact(fitted, folder / f"fitted_{p}.ts", arch=PHOTO_ARCH, labels=names,
                                               precision=p) for p in ("fp32", "fp16")}
        compare("resnet18 fitted to the photos", fitted, fitted_artifacts, frames, args.rounds, args.device)
        mobile = build_model("mobilenet_v2", num_classes=1000).eval()
        labels = [str(i) for i in range(1000)]
        mobile_artifacts = {p: export_artifact(mobile, folder / f"mobile_{p}.ts", arch="mobilenet_v2", labels=labels,
                                               precision=p) for p in ("fp32", "fp16")}
        compare("mobilenet_v2 (random weights: speed only)", mobile, mobile_artifacts, frames, args.rounds,
                args.device, agreement=False)
        train_on(args.device, args.epochs, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
