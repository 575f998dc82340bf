"""edge-train on a real 10-class image folder, then the same val images through edge-export and edge-classify.

    python benchmarks/bench_train.py [--epochs 4] [--arch mobilenet_v2] [--lr 0.01] [--keep DIR]
    python benchmarks/bench_train.py --throughput [--epochs 2] [--side 64]   # images/s per setup

``--throughput`` prints training images/s (the last epoch's train phase, so start-up and the first
epoch's warm-up are left out) for: a bare training loop in the style of torchvision's reference
``train.py`` (DataLoader, SGD, CrossEntropyLoss; nothing else: the floor of what edge-train adds),
edge-train with 1 process and with 2 processes on the CPU (``torchrun --standalone``, gloo), and where
torch sees CUDA, 1 GPU in FP32 (``--no-amp``) and with ``--amp``.

The folder: scikit-learn's 1,797 handwritten digits (real scans, 8x8), scaled up to 64 px PNGs, every
fifth image in val/ (1,437 train, 360 val). The run: ``--weights none`` (from scratch, no download),
``--image-size 64``, ``--augment none`` (a mirrored or cropped digit is another digit), ``--lr 0.01``
(from scratch wants more than fine-tuning's 0.001). Prints the per-epoch time and accuracy, then the
accuracy of the best checkpoint beside that of its ONNX export run by ``edge-classify`` on the val
folder: the training-side and device-side preprocessing should be the same function of the image.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_digits(root: Path, side: int) -> Path:
    """``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png`` from scikit-learn's digits."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        folder = root / ("val" if index % 5 == 0 else "train") / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((side, side), Image.BILINEAR).save(folder / f"{index:04d}.png")
    return root


def classify_accuracy(model: Path, folder: Path) -> Tuple[int, int, float]:
    """edge-classify (a separate process, as on the device) on ``folder``: correct, total, seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edge.cli", "--model", str(model), "--image", str(folder), "--json"],
                            capture_output=True, text=True, cwd=REPO, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"edge-classify failed: {result.stderr.strip()}")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    correct = sum(r["label"] == Path(r["source"]).parent.name for r in records)
    return correct, len(records), seconds


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--lr", default="0.01")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--workers", default=None, help="edge-train --workers (default: its own)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--throughput", action="store_true", help="images/s per setup instead of the accuracy table")
    parser.add_argument("--batch-size", type=int, default=32, help="per process, for --throughput (default 32)")
    args = parser.parse_args(argv)
    if args.throughput:
        return throughput(args)

    from export.train.checkpoint import load_checkpoint
    from export.cli import export_main
    from export.cli import train_main

    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_train-")))
        data = make_digits(work / "digits", args.side)
        out = work / "run" / "digits.pt"
        train_argv = ["--data", str(data), "--arch", args.arch, "--weights", "none", "--image-size", str(args.side),
                      "--augment", "none", "--lr", args.lr, "--epochs", str(args.epochs), "--out", str(out)]
        if args.workers is not None:
            train_argv += ["--workers", args.workers]
        print("edge-train " + " ".join(train_argv), flush=True)
        started = time.perf_counter()
        if train_main(train_argv) != 0:
            return 1
        total = time.perf_counter() - started
        ckpt = load_checkpoint(out)
        best = ckpt["history"][ckpt["best_epoch"] - 1]
        history = ckpt_history(out, ckpt)

        rows = [("checkpoint (eager torch, PIL preprocessing)", best["val_correct"], best["val_images"], None)]
        for precision in ("fp32", "fp16"):
            onnx = work / f"digits_{precision}.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                if export_main(["--checkpoint", str(out), "--precision", precision, "--out", str(onnx)]) != 0:
                    return 1
            correct, count, seconds = classify_accuracy(onnx, data / "val")
            rows.append((f"ONNX {precision.upper()} via edge-classify (OpenCV preprocessing)", correct, count, seconds))

    print()
    print(f"{args.arch} from scratch, {args.side} px, {best['train_images']} train / {best['val_images']} val images, "
          f"{args.epochs} epochs in {total:.0f} s (including start-up and writing checkpoints and plots)")
    print(f"{'epoch':>5}  {'time':>7}  {'train acc':>9}  {'val acc':>8}")
    for row in history:
        print(f"{row['epoch']:>5}  {row['seconds']:>6.1f}s  {row['train_acc']:>9.2%}  {row['val_acc']:>8.2%}")
    print()
    width = max(len(name) for name, *_ in rows)
    print(f"{'best epoch ' + str(ckpt['best_epoch']) + ', val images':<{width}}  {'accuracy':>8}  {'correct':>7}  "
          f"{'delta':>7}  {'wall':>6}")
    reference = rows[0][1] / rows[0][2]
    for name, correct, count, seconds in rows:
        delta = f"{(correct / count - reference) * 100:+.2f}pt" if seconds is not None else ""
        wall = f"{seconds:.1f}s" if seconds is not None else ""
        print(f"{name:<{width}}  {correct / count:>8.2%}  {correct:>3}/{count:<3}  {delta:>7}  {wall:>6}")
    return 0


def ckpt_history(out: Path, best_ckpt: dict) -> List[dict]:
    """Every epoch's row: the last checkpoint has them all (the best one stops at its own epoch)."""
    from export.train.checkpoint import load_checkpoint

    last = out.with_name(f"{out.stem}.last{out.suffix}")
    return load_checkpoint(last)["history"] if last.exists() else best_ckpt["history"]


def throughput(args: argparse.Namespace) -> int:
    """Training images/s per setup (see the module's docstring); one fresh process per setup."""
    import torch

    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_train-")))
        data = make_digits(work / "digits", args.side)
        common = ["--data", str(data), "--arch", args.arch, "--weights", "none", "--image-size", str(args.side),
                  "--augment", "none", "--lr", args.lr, "--epochs", str(args.epochs), "--batch-size",
                  str(args.batch_size), "--workers", args.workers or "0"]
        setups = [("edge-train, CPU, 1 process, FP32", [], ["--device", "cpu"]),
                  ("edge-train, CPU, 2 processes (gloo), FP32", TORCHRUN_2, ["--device", "cpu"])]
        if torch.cuda.is_available():
            setups += [("edge-train, 1 GPU, FP32", [], ["--device", "cuda", "--no-amp"]),
                       ("edge-train, 1 GPU, AMP + channels_last", [], ["--device", "cuda", "--amp"])]
        rows = [("bare loop (torchvision reference style), CPU, 1 process", bare_loop(data, args, "cpu"))]
        if torch.cuda.is_available():
            rows.append(("bare loop (torchvision reference style), 1 GPU, FP32", bare_loop(data, args, "cuda")))
        for index, (name, launcher, flags) in enumerate(setups):
            out = work / f"run{index}" / "digits.pt"
            rows.append((name, edge_train_rate(launcher, common + flags + ["--out", str(out)], out)))
    width = max(len(name) for name, _ in rows)
    print(f"\n{args.arch} from scratch, {args.side} px, batch {args.batch_size} per process, last of "
          f"{args.epochs} epochs, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (torchrun sets 1 per process)")
    print(f"{'setup':<{width}}  {'images/s':>9}")
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>9.1f}")
    return 0


TORCHRUN_2 = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def edge_train_rate(launcher: List[str], train_argv: List[str], out: Path) -> float:
    """Run edge-train in a fresh process (under torchrun when ``launcher``); its last epoch's train images/s."""
    command = [sys.executable] + (launcher or []) + ["-m", "export.train"] + train_argv
    print(" ".join(command[1:]), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        raise SystemExit(f"edge-train failed: {result.stderr.strip()[-2000:]}")
    metrics = json.loads(out.with_name(f"{out.stem}.metrics.json").read_text())
    last = metrics["epochs"][-1]
    return last["train_images"] / last["train_seconds"]


def bare_loop(data: Path, args: argparse.Namespace, device_name: str) -> float:
    """torchvision reference train.py's inner loop on the same images and transforms: images/s of the last epoch."""
    import torch

    from export.train.data import ImageFiles, eval_transform, find_image_folders, resize_for
    from export.zoo import build_model

    device = torch.device(device_name)
    folders = find_image_folders(data)
    dataset = ImageFiles(folders.train, eval_transform(side=args.side, resize=resize_for(args.side)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=int(args.workers or 0), pin_memory=device.type == "cuda")
    model = build_model(args.arch, len(folders.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(args.lr), momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(args.epochs):
        started, seen = time.perf_counter(), 0
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # the reference logs the loss every step: the same synchronisation
            seen += len(targets)
        seconds = time.perf_counter() - started
    return seen / seconds


if __name__ == "__main__":
    sys.exit(main())
