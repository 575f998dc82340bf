"""Per-frame cost of edge-classify --image against the seed pipeline, on the same frames in one run.

    python benchmarks/bench_image.py [--rounds 20] [--arch mobilenet_v2]

Seed pipeline: cv2.imread -> RGB -> PIL -> torchvision Resize/CenterCrop/ToTensor/Normalize -> eager
FP32 torch -> argmax. Ours: OpenCV decode -> edge.model.preprocess -> FP32 ONNX (uint8 input) on
onnxruntime's CPU provider -> softmax/top-k. Weights are random (speed does not depend on them).
Also times a whole single-image ``edge-classify`` process: wall time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the seed pipeline is tests/reference.py, shared with the tests

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def random_model(arch: str):
    """``arch`` with random weights from seed 0, in eval mode: the same model every time, so the seed pipeline
    (eager torch, in its own process) runs exactly what :func:`random_artifact` exported. Speed does not depend on
    the weights."""
    import torch

    from export.zoo import build_model

    torch.manual_seed(0)
    return build_model(arch).eval()


def random_artifact(path: Path, arch: str) -> Path:
    """:func:`random_model` exported FP32 to ``path`` (its suffix picks ONNX or TorchScript), 1000 placeholder labels."""
    from export.exporter import export_artifact

    return export_artifact(random_model(arch), path, arch=arch, labels=[f"class {i}" for i in range(1000)],
                           precision="fp32")


def make_frames(folder: Path) -> List[Path]:
    """640x480 JPEGs (a USB camera's frame) cut and scaled from scikit-image's photos."""
    from skimage import data

    paths = []
    for name in PHOTOS:
        rgb = getattr(data, name)()[..., :3]
        h, w = rgb.shape[:2]
        scale = max(640 / w, 480 / h)
        resized = cv2.resize(rgb, (int(np.ceil(w * scale)), int(np.ceil(h * scale))), interpolation=cv2.INTER_AREA)
        frame = resized[:480, :640]
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def time_stages(frames: List[Path], stages: Callable[[Path], Dict[str, float]], rounds: int) -> Dict[str, float]:
    """Median milliseconds of each stage over ``rounds`` passes (after one warm-up pass)."""
    for path in frames:
        stages(path)
    samples: Dict[str, List[float]] = {}
    for _ in range(rounds):
        for path in frames:
            for name, ms in stages(path).items():
                samples.setdefault(name, []).append(ms)
    return {name: statistics.median(values) for name, values in samples.items()}


def seed_stages(model) -> Callable[[Path], Dict[str, float]]:
    import torch
    from reference import seed_input, seed_transform

    transform = seed_transform()

    def run(path: Path) -> Dict[str, float]:
        t0 = time.perf_counter()
        bgr = cv2.imread(str(path))
        t1 = time.perf_counter()
        tensor = seed_input(bgr, transform)
        t2 = time.perf_counter()
        with torch.no_grad():
            logits = model(tensor)
        t3 = time.perf_counter()
        int(logits.argmax())
        t4 = time.perf_counter()
        return {"decode": ms(t0, t1), "preprocess": ms(t1, t2), "infer": ms(t2, t3), "top-k": ms(t3, t4),
                "total": ms(t0, t4)}

    return run


def our_stages(classifier) -> Callable[[Path], Dict[str, float]]:
    from edge.sources.images import read_image

    def run(path: Path) -> Dict[str, float]:
        t0 = time.perf_counter()
        frame = read_image(path)
        t1 = time.perf_counter()
        batch = classifier.preprocess(frame)[None]
        t2 = time.perf_counter()
        logits = classifier.backend.run(batch)[0]
        t3 = time.perf_counter()
        classifier.prediction_from_logits(logits)
        t4 = time.perf_counter()
        return {"decode": ms(t0, t1), "preprocess": ms(t1, t2), "infer": ms(t2, t3), "top-k": ms(t3, t4),
                "total": ms(t0, t4)}

    return run


def model_alone(classifier, frames: List[Path], rounds: int) -> float:
    from edge.sources.images import read_image

    batches = [classifier.preprocess(read_image(p))[None] for p in frames]
    stages = lambda i: {"infer": _timed(lambda: classifier.backend.run(batches[i]))}  # noqa: E731
    return time_stages(list(range(len(batches))), stages, rounds)["infer"]


# Measured from a small launcher process: a child forked straight from this one (torch loaded) would
# count this process's memory as its own until it execs.
_LAUNCHER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - started
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "wall_s": wall, "peak_mb": usage.ru_maxrss / 1024,
                  "stderr": proc.stderr.read().decode()[-300:]}))
"""


def process_run(command: List[str]) -> Dict[str, float]:
    """Wall time and peak RSS (MB) of one whole process."""
    result = json.loads(subprocess.run([sys.executable, "-c", _LAUNCHER, *command], capture_output=True, text=True,
                                       cwd=REPO, check=True).stdout)
    if result["code"] != 0:
        raise RuntimeError(f"{command[:3]} failed: {result['stderr']}")
    return {"wall_s": result["wall_s"], "peak_mb": result["peak_mb"]}


def median_process(command: List[str], runs: int = 5) -> Dict[str, float]:
    results = [process_run(command) for _ in range(runs)]
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def ms(start: float, stop: float) -> float:
    return (stop - start) * 1e3


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return ms(t0, time.perf_counter())


def measure(mode: str, artifact: Path, frames: List[Path], rounds: int) -> Dict[str, float]:
    """One pipeline's medians, in its own process: ours never has torch loaded (as on a device), and
    neither pipeline's thread pools spin against the other's."""
    if mode == "seed":
        return time_stages(frames, seed_stages(random_model(artifact.stem)), rounds)
    from edge.model.classify import Classifier

    classifier = Classifier.open(artifact, device="cpu")
    result = time_stages(frames, our_stages(classifier), rounds)
    result["model alone"] = model_alone(classifier, frames, rounds)
    return result


def in_subprocess(mode: str, artifact: Path, frames: List[Path], rounds: int) -> Dict[str, float]:
    command = [sys.executable, __file__, "--measure", mode, "--rounds", str(rounds), "--artifact", str(artifact),
               *map(str, frames)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each pipeline; best kept")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--measure", choices=("seed", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("frames", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.artifact, args.frames, args.rounds)))
        return

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frames = make_frames(folder)
        artifact = random_artifact(folder / f"{args.arch}.onnx", args.arch)
        runs: Dict[str, List[Dict[str, float]]] = {"seed": [], "ours": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(in_subprocess(mode, artifact, frames, args.rounds))
        seed, ours = (min(runs[m], key=lambda r: r["total"]) for m in ("seed", "ours"))
        edge_run = median_process([sys.executable, "-m", "edge.cli", "--model", str(artifact), "--image",
                                   str(frames[0])])
    alone = ours["model alone"]
    print(f"{args.arch}, {len(frames)} frames 640x480 JPEG, {args.rounds} rounds, median ms per frame "
          f"(best of {args.repeats} alternating runs), CPU ({os.cpu_count()} cores), torch {torch.__version__}")
    print()
    print("| stage | seed pipeline (PIL + torchvision + eager torch) | edge-classify (OpenCV + ONNX Runtime) |")
    print("|---|---:|---:|")
    for stage in ("decode", "preprocess", "infer", "top-k", "total"):
        print(f"| {stage} | {seed[stage]:.2f} | {ours[stage]:.2f} |")
    around = ours["preprocess"] + ours["top-k"] + max(ours["infer"] - alone, 0.0)
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| end-to-end speed-up over the seed | {seed['total'] / ours['total']:.1f}x | >= 4x |")
    print(f"| ONNX model alone (session.run) | {alone:.2f} ms | |")
    print(f"| pipeline around the model, decode excluded | {around:.2f} ms = {100 * around / alone:.0f}% "
          f"of the model | <= 30% |")
    print(f"| single-image edge-classify run: wall | {edge_run['wall_s']:.2f} s | < 1 s |")
    print(f"| single-image edge-classify run: peak RSS | {edge_run['peak_mb']:.0f} MB | <= 200 MB |")


if __name__ == "__main__":
    main()
