"""Does ``--collect``'s ``uncertain`` sampler find the model's mistakes, what does collecting cost, and does
training on what it found help? One run, on real handwritten digits (scikit-learn's), a deliberately weak model.

    python benchmarks/bench_collect.py [--stream 600] [--train-per-class 40] [--p 0.6] [--margin 0.2]

1. A weak model: resnet18 from scratch at 32 px, ``edge-train`` for 5 epochs on 40 digits per class,
   exported with ``edge-export`` (FP32 ONNX).
2. A video of other digits (one per frame, 64x64): ``edge-classify --source VIDEO --collect DIR``
   (``edge.cli.run_stream``, the real loop and sink) with ``uncertain:P:MARGIN``, then with ``rate=R`` at the
   share uncertainty kept (same seed every run): the share of misclassified frames among those kept,
   against the model's error rate on the whole stream. Target: uncertainty >= 3x random.
3. The loop's FPS without ``--collect`` and with it (best of 2 each), and the disk the kept JPEGs take.
4. The loop closed: a simulated reviewer confirms or relabels every kept frame with its true label
   (``edge.collect.folder.decide``, what ``edge-collect`` and ``/review`` call); ``edge-train --init WEAK.pt``
   fine-tunes the weak model on its own training digits plus DIR/labelled (copied into one ImageFolder: a
   class the collection lacks would be kept in the model but not trained on), ``edge-export`` exports it;
   both models are scored on the collected frames and on held-out digits.
Intervals and near-duplicate suppression are off in 2 (every frame is a different digit); nothing else is.
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIDE = 32  # the model's input
FRAME = 64  # the video's frames
Collected = List[Dict]  # manifest entries
FAST = ["--arch", "resnet18", "--image-size", str(SIDE), "--augment", "none",
        "--batch-size", "16", "--workers", "0"]


def digits() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits as 64x64 grey uint8 images, and their classes, shuffled (seed 0)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.RandomState(0).permutation(len(data.target))
    images = [cv2.resize((data.images[i] / 16 * 255).astype(np.uint8), (FRAME, FRAME), interpolation=cv2.INTER_LINEAR)
              for i in order]
    return np.stack(images), data.target[order]


def write_folder(root: Path, images: np.ndarray, classes: np.ndarray) -> Path:
    for index, (image, target) in enumerate(zip(images, classes)):
        folder = root / f"digit{target}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{index:05d}.png"), image)
    return root


def write_video(path: Path, images: np.ndarray) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (FRAME, FRAME))
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def command(name: str, args: Sequence[str]) -> None:
    """An edge-* console script, as a user runs it (its output kept unless it fails)."""
    script = {"edge-train": "train_main", "edge-export": "export_main"}[name]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", f"import sys; from export.console import {script}; "
                             f"sys.argv[0] = '{name}'; {script}()", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")


def train_and_export(data: Path, out: Path, epochs: int, start: Sequence[str] = ("--weights", "none")) -> Path:
    """``edge-train`` from ``start`` (from scratch, or ``--init CKPT``), then ``edge-export`` of the best epoch."""
    command("edge-train", ["--data", data, "--epochs", epochs, "--out", out, "--val-fraction", "0.2", *FAST, *start])
    onnx = out.with_suffix(".onnx")
    command("edge-export", ["--checkpoint", out, "--precision", "fp32", "--out", onnx])
    return onnx


def run_loop(model: Path, video: Path, collect=None) -> Dict[str, float]:
    """edge-classify --source VIDEO [--collect ...] in process (the real loop and sinks); FPS and frames."""
    from edge.cli import _open_model, plan_concurrency, run_stream
    from edge.pipeline import StageTimes
    from edge.settings import Settings

    settings = Settings(model=model, source=str(video), stats_interval=0, quiet=True, collect=collect)
    plan = plan_concurrency(settings, [], gpu=False)
    classifier = _open_model(settings, model, plan)
    times = StageTimes()
    with contextlib.redirect_stdout(io.StringIO()):
        run_stream(settings, classifier, plan, threading.Event(), times)
    return {"fps": times.fps(), "frames": times.frames, "output_ms": float(np.median(times.history["output"]))}


def predictions(model: Path, images: np.ndarray) -> List[str]:
    from edge.model.classify import Classifier

    classifier = Classifier.open(model, backend="auto", device="cpu")
    return [classifier.classify(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)).label for image in images]


def collect(model: Path, video: Path, root: Path, when: str, seed: int = 0) -> Tuple[Dict, Collected]:
    from edge.collect.sampler import CollectOptions, parse_when

    if root.exists():
        shutil.rmtree(str(root))
    options = CollectOptions(root, parse_when(when), interval_s=0.0, max_total=100_000, dedup_bits=0, seed=seed)
    loop = run_loop(model, video, options)
    entries = [json.loads(line) for line in (root / "manifest.jsonl").read_text("utf-8").splitlines()]
    return loop, entries


def mistake_share(entries: Collected, truth: np.ndarray) -> float:
    wrong = sum(1 for e in entries if e["label"] != f"digit{truth[e['frame']]}")
    return wrong / max(len(entries), 1)


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def review_with_truth(root: Path, entries: Collected, truth: np.ndarray, *_model_and_video) -> Dict[str, int]:
    """A reviewer who knows the answers: confirm the right guesses, relabel the wrong ones (edge.collect.folder.decide)."""
    from edge.collect.folder import decide

    done = {"confirm": 0, "relabel": 0}
    for entry in entries:
        right = f"digit{truth[entry['frame']]}"
        if not (root / entry["file"]).exists():
            continue
        if entry["label"] == right:
            decide(root, [Path(entry["file"])], "confirm")
            done["confirm"] += 1
        else:
            decide(root, [Path(entry["file"])], "relabel", right)
            done["relabel"] += 1
    return done


def merge(root: Path, folders: Sequence[Path]) -> Path:
    """One ImageFolder from several (copies): the original training digits and the reviewed frames."""
    for number, folder in enumerate(folders):
        for image in folder.glob("*/*"):
            target = root / image.parent.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(str(image), str(target / f"{number}-{image.name}"))
    return root


def accuracy(model: Path, images: np.ndarray, truth: np.ndarray) -> float:
    guesses = predictions(model, images)
    return float(np.mean([g == f"digit{t}" for g, t in zip(guesses, truth)]))


def main(argv: Sequence[str] = None, reviewer=None) -> Dict[str, object]:
    """The whole loop; ``reviewer(DIR, entries, truth, model, video)`` takes the decisions (default: the functions
    ``edge-collect`` and /review call; tests/test_collect.py passes one that clicks through /review in Chromium)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--stream", type=int, default=600)
    parser.add_argument("--p", type=float, default=0.6)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-collect-"))
    work.mkdir(parents=True, exist_ok=True)
    images, classes = digits()
    small = np.concatenate([np.flatnonzero(classes == c)[:args.train_per_class] for c in range(10)])
    rest = np.setdiff1d(np.arange(len(classes)), small)
    stream, held = rest[:args.stream], rest[args.stream:]
    weak = train_and_export(write_folder(work / "small", images[small], classes[small]), work / "weak.pt", args.epochs)
    video = write_video(work / "stream.avi", images[stream])
    truth = classes[stream]

    base_error = 1 - accuracy(weak, images[stream], truth)
    uncertain_loop, uncertain = collect(weak, video, work / "u", f"uncertain:{args.p}:{args.margin}")
    share = len(uncertain) / len(stream)
    random_loop, randomly = collect(weak, video, work / "r", f"rate={share:.4f}", seed=1)
    plain = max((run_loop(weak, video) for _ in range(2)), key=lambda r: r["fps"])
    again = collect(weak, video, work / "u2", f"uncertain:{args.p}:{args.margin}")[0]
    with_collect = max((uncertain_loop, again), key=lambda r: r["fps"])
    used = disk_bytes(work / "u" / "unreviewed")

    reviewed = (reviewer or review_with_truth)(work / "u", uncertain, truth, weak, video)
    collected_images = images[stream][[e["frame"] for e in uncertain]]
    collected_truth = truth[[e["frame"] for e in uncertain]]
    better = train_and_export(merge(work / "retrain", [work / "small", work / "u" / "labelled"]),
                              work / "retrained.pt", args.epochs, ["--init", work / "weak.pt"])
    results = {
        "stream": len(stream), "base_error": base_error, "kept_uncertain": len(uncertain), "kept_share": share,
        "mistakes_uncertain": mistake_share(uncertain, truth), "kept_random": len(randomly),
        "mistakes_random": mistake_share(randomly, truth), "fps_plain": plain["fps"], "fps_collect": with_collect["fps"],
        "output_plain": plain["output_ms"], "output_collect": with_collect["output_ms"],
        "disk_mb": used / 1e6, "reviewed": reviewed,
        "collected_acc_before": accuracy(weak, collected_images, collected_truth),
        "collected_acc_after": accuracy(better, collected_images, collected_truth),
        "held_acc_before": accuracy(weak, images[held], classes[held]),
        "held_acc_after": accuracy(better, images[held], classes[held]), "held": len(held)}
    print_table(results, args)
    return results


def print_table(r: Dict, args: argparse.Namespace) -> None:
    ratio = r["mistakes_uncertain"] / max(r["mistakes_random"], 1e-9)
    print(f"\nweak model: resnet18 32 px, {args.train_per_class} digits per class, {args.epochs} epochs; "
          f"error on the {r['stream']}-frame stream {r['base_error']:.1%}\n")
    print("| sampler | frames kept | share of stream | misclassified among kept |")
    print("|---|---:|---:|---:|")
    print(f"| uncertain:{args.p}:{args.margin} | {r['kept_uncertain']} | {r['kept_share']:.1%} | "
          f"{r['mistakes_uncertain']:.1%} |")
    print(f"| rate={r['kept_share']:.3f} (random) | {r['kept_random']} | {r['kept_random'] / r['stream']:.1%} | "
          f"{r['mistakes_random']:.1%} |")
    print(f"\nuncertainty finds {ratio:.1f}x the mistakes of a random sample of the same size (target >= 3x)\n")
    print("| loop | FPS | output stage, median ms | disk |")
    print("|---|---:|---:|---:|")
    print(f"| without --collect | {r['fps_plain']:.0f} | {r['output_plain']:.3f} | |")
    print(f"| with --collect uncertain | {r['fps_collect']:.0f} | {r['output_collect']:.3f} | {r['disk_mb']:.2f} MB "
          f"for {r['kept_uncertain']} frames |")
    print(f"\nreviewed: {r['reviewed']['confirm']} confirmed, {r['reviewed']['relabel']} relabelled; "
          "retrained from the weak checkpoint (--init weak.pt) on its training digits + DIR/labelled:\n")
    print("| accuracy | weak model | retrained |")
    print("|---|---:|---:|")
    print(f"| on the {r['kept_uncertain']} collected frames | {r['collected_acc_before']:.1%} | "
          f"{r['collected_acc_after']:.1%} |")
    print(f"| on {r['held']} held-out digits | {r['held_acc_before']:.1%} | {r['held_acc_after']:.1%} |")


if __name__ == "__main__":
    main()
