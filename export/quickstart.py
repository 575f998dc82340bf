"""``edge-quickstart``: the whole user path, offline, on data that ships inside scikit-learn.

Writes a few classes of scikit-learn's handwritten digits (real 8x8 scans, scaled up to 32 px PNGs) into a
working folder, fine-tunes a small torchvision model on them from scratch (``edge-train --weights none``),
exports it to ONNX (``edge-export --checkpoint``, which checks the file against the eager PyTorch model on
every held-out image), classifies the held-out images with ``edge-classify --json``, and prints what came
out: the files, the training time, the held-out top-1 accuracy, and the next commands to try::

    edge-quickstart                                  # ./edge-quickstart, resnet18, 4 digits, 3 epochs
    edge-quickstart --workdir /tmp/qs --epochs 5 --classes 10

Every step runs in this process through the commands' own entry points (``export.cli.train_main``,
``export.cli.export_main``, ``edge.cli.main``), so it exercises exactly what a user types. Their tables
go to stderr as progress; stdout holds only the summary, and edge-classify's JSON lines are kept in
``classify.jsonl``. The working folder is claimed with a manifest (``.edge-quickstart.json``) of the files
written: a rerun removes and rewrites those, and a non-empty folder without one is refused (exit 2), so
nothing edge-quickstart did not write is ever overwritten. Exit codes: 0 done; 2 usage error; otherwise
the code of the step that stopped (edge-export's 1: the ONNX file disagreed with the eager model).

The defaults (resnet18 at 32 px, 4 classes of 100 images, 3 epochs, batch 32) reach 96% (96/100, seeded)
on the held-out digits in about 90 s of CPU time in all: a minute or two on two quiet cores (5 minutes on a
shared machine at load 10). mobilenet_v2 from scratch was still at chance (25%) after the same 3 epochs, and
slower. ``write_digits`` is importable for tests and benchmarks that want the same data.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set

from edge.argtypes import positive_int
from edge.errors import EXIT_OK, EXIT_USAGE, add_version, parse_arguments

from . import __version__

log = logging.getLogger("edge-quickstart")

PROG = "edge-quickstart"
MANIFEST = ".edge-quickstart.json"
SIDE = 32  # the digits are 8x8: 32 px keeps every layer of the zoo's small nets busy and an epoch short
MAX_PER_CLASS = 174  # the rarest digit (8) has 174 scans
VAL_EVERY = 4  # every 4th image of a class is held out
DEFAULTS = dict(workdir=Path("edge-quickstart"), arch="resnet18", epochs=3, classes=4, per_class=100)
CHECKPOINT, MODEL, ANSWERS = "digits.pt", "digits.onnx", "classify.jsonl"


class UsageError(Exception):
    """A one-line problem the user can fix (exit 2)."""


def write_digits(root: Path, *, per_class: int = 100, val_every: int = VAL_EVERY, classes: int = 4,
                 side: int = SIDE) -> Path:
    """``root/train/digitN/*.png`` and ``root/val/digitN/*.png`` (every ``val_every``-th image of a class in val).

    scikit-learn's digits are 16-level greyscale scans, 8x8; they are scaled to ``side`` px with a bilinear
    filter, as a camera's picture of a digit would be. Returns ``root``.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: Dict[int, int] = {}
    for index, (image, target) in enumerate(zip(digits.images, digits.target)):
        target = int(target)
        if target >= classes or counts.get(target, 0) >= per_class:
            continue
        rank = counts[target] = counts.get(target, 0) + 1
        folder = root / ("val" if rank % val_every == 0 else "train") / f"digit{target}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((side, side), Image.BILINEAR).save(folder / f"{index:04d}.png")
    log.info("wrote %d digit images under %s", sum(counts.values()), root)
    return root


# --- the working folder: claimed by a manifest of what was written ---------------------------------------

def files_under(folder: Path) -> Set[Path]:
    """Every file (and link) under ``folder``, relative to it."""
    return {p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir()}


def claim_workdir(workdir: Path) -> None:
    """Make ``workdir`` ours and empty of our last run's files, or refuse it (:class:`UsageError`).

    Ours: it does not exist, is empty, or holds our manifest. A file we did not write is never touched.
    """
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} is a file; choose a folder")
    manifest = workdir / MANIFEST
    if workdir.is_dir() and any(workdir.iterdir()) and not manifest.is_file():
        raise UsageError(f"--workdir {workdir} is not empty and edge-quickstart did not create it; "
                         "choose a new or empty folder")
    ours = read_manifest(manifest) if manifest.is_file() else set()
    foreign = sorted(files_under(workdir) - ours - {Path(MANIFEST)}) if workdir.is_dir() else []
    if foreign:
        raise UsageError(f"--workdir {workdir} holds {workdir / foreign[0]}, which edge-quickstart did not write; "
                         "move it away or choose another folder")
    for relative in sorted(ours):
        (workdir / relative).unlink(missing_ok=True)
    _remove_empty_folders(workdir, ours)
    workdir.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, set())
    log.info("claimed %s (removed %d files of the last run)", workdir, len(ours))


def read_manifest(manifest: Path) -> Set[Path]:
    try:
        written = json.loads(manifest.read_text(encoding="utf-8"))["written"]
        return {Path(name) for name in written if not Path(name).is_absolute() and ".." not in Path(name).parts}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{manifest} is unreadable ({exc}); remove the folder or choose another") from None


def write_manifest(manifest: Path, written: Set[Path]) -> None:
    manifest.write_text(json.dumps({"written": sorted(str(p) for p in written)}, indent=1) + "\n", encoding="utf-8")


def _remove_empty_folders(workdir: Path, files: Set[Path]) -> None:
    """The folders that held ``files`` (relative to ``workdir``), deepest first, where now empty."""
    folders = {workdir / parent for relative in files for parent in relative.parents if parent != Path(".")}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


@contextlib.contextmanager
def recording(workdir: Path) -> Iterator[None]:
    """Add whatever appears under ``workdir`` during the block to the manifest, even if the block fails."""
    before = files_under(workdir)
    try:
        yield
    finally:
        manifest = workdir / MANIFEST
        written = read_manifest(manifest) | (files_under(workdir) - before - {Path(MANIFEST)})
        write_manifest(manifest, written)


# --- the steps ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    workdir: Path
    arch: str
    epochs: int
    classes: int
    per_class: int
    verbose: bool

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def checkpoint(self) -> Path:
        return self.workdir / CHECKPOINT

    @property
    def model(self) -> Path:
        return self.workdir / MODEL

    @property
    def answers(self) -> Path:
        return self.workdir / ANSWERS


class StepFailed(Exception):
    """A command returned non-zero; it has said why on stderr."""

    def __init__(self, command: str, code: int) -> None:
        super().__init__(f"{command} stopped with exit code {code} (its message is above)")
        self.code = code


def step(number: int, text: str) -> None:
    print(f"{PROG}: [{number}/4] {text}", file=sys.stderr, flush=True)


def call(command: str, main: Callable[[List[str]], int], argv: List[str], stdout) -> None:
    """``main(argv)`` with its stdout sent to ``stdout``; :class:`StepFailed` unless it returns 0."""
    log.debug("%s %s", command, " ".join(argv))
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    if code != EXIT_OK:
        raise StepFailed(command, code)


def train(settings: Settings) -> float:
    """edge-train on ``data/`` from random initialisation; its epoch table goes to stderr. The seconds taken."""
    from .cli import train_main

    argv = ["--data", str(settings.data), "--out", str(settings.checkpoint), "--arch", settings.arch,
            "--weights", "none", "--image-size", str(SIDE), "--augment", "none", "--epochs", str(settings.epochs),
            "--workers", "0"] + (["-v"] if settings.verbose else [])
    started = time.perf_counter()
    call("edge-train", train_main, argv, sys.stderr)
    return time.perf_counter() - started


def export(settings: Settings) -> None:
    """edge-export to FP32 ONNX, verified against the eager model on every held-out image.

    FP32 because a model trained for a minute is not robust to FP16 rounding, and the point here is
    agreement; TensorRT on a Jetson runs an FP32 file in FP16 anyway.
    """
    from .cli import export_main

    argv = ["--checkpoint", str(settings.checkpoint), "--precision", "fp32", "--verify-images",
            str(settings.data / "val"), "--out", str(settings.model)] + (["-v"] if settings.verbose else [])
    call("edge-export", export_main, argv, sys.stderr)


def classify(settings: Settings) -> List[dict]:
    """edge-classify --json on the held-out images; its lines are kept in ``classify.jsonl``."""
    from edge.cli import main as classify_main

    captured = io.StringIO()
    try:
        call("edge-classify", classify_main, ["--model", str(settings.model), "--image", str(settings.data / "val"),
                                              "--json"], captured)
    finally:
        settings.answers.write_text(captured.getvalue(), encoding="utf-8")
    return [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]


def correct_answers(records: Sequence[dict]) -> int:
    """How many of edge-classify's answers name the image's class folder (``.../val/digit3/0042.png``)."""
    return sum(record["label"] == Path(record["source"]).parent.name for record in records)


def eager_result(settings: Settings) -> Optional[tuple]:
    """``(correct, images)`` of the eager PyTorch model on the held-out images, from edge-train's metrics file."""
    metrics_file = settings.checkpoint.with_name(settings.checkpoint.stem + ".metrics.json")
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        best = metrics["epochs"][metrics["best_epoch"] - 1]
        return int(best["val_correct"]), int(best["val_images"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("cannot read the eager model's accuracy from %s: %s", metrics_file, exc)
        return None


# --- the summary ----------------------------------------------------------------------------------------------

def summary(settings: Settings, seconds: float, train_seconds: float, records: Sequence[dict]) -> str:
    """What the user is told: files, time, accuracy, agreement, and what to run next."""
    correct, images = correct_answers(records), len(records)
    eager = eager_result(settings)
    written = read_manifest(settings.workdir / MANIFEST)
    pngs = sum(1 for p in written if p.parts[0] == "data")
    size = settings.model.stat().st_size / 1e6
    others = sorted(p.name for p in written if len(p.parts) == 1 and p.name not in (CHECKPOINT, MODEL, ANSWERS))
    lines = [
        f"{PROG}: done in {_duration(seconds)}; wrote {len(written)} files under {settings.workdir}/:",
        f"  data/          {pngs} PNGs of {settings.classes} digit classes (train/ and {images} held out in val/)",
        f"  {CHECKPOINT:<14} the trained checkpoint (beside it: {', '.join(others)})",
        f"  {MODEL:<14} the ONNX model, {size:.1f} MB, FP32, uint8 input",
        f"  {ANSWERS:<14} edge-classify's JSON line per held-out image",
        f"training: {settings.arch} from scratch, {_plural(settings.epochs, 'epoch')}, {SIDE} px, "
        f"{_duration(train_seconds)}",
        f"held-out top-1 accuracy (edge-classify, ONNX): {_share(correct, images)}",
    ]
    if eager:
        lines.append(f"eager PyTorch model on the same images (edge-train): {_share(*eager)}; edge-export found the "
                     f"ONNX model's top-1 equal to it on all {images}")
    lines += ["next:",
              f"  edge-classify --model {settings.model} --image {settings.data / 'val' / 'digit1'}",
              "  edge-export --weights pretrained --out mobilenet_v2.onnx && edge-classify --model mobilenet_v2.onnx "
              "--image YOUR_PHOTO.jpg   # ImageNet; downloads the weights (see README for offline)",
              "  edge-train --data YOUR_PHOTOS/ --out runs/photos.pt   # one folder per class"]
    return "\n".join(lines)


def _share(correct: int, images: int) -> str:
    return f"{correct / images:.1%} ({correct}/{images})" if images else "no images"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# --- the command ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, export and run a digit classifier on scikit-learn's handwritten digits: the whole "
                    "edge-classifier path, offline, in a few minutes on a laptop's CPU.")
    add = parser.add_argument
    add("--workdir", type=Path, default=DEFAULTS["workdir"], metavar="DIR",
        help="where everything is written; a new or empty folder, or one an earlier edge-quickstart wrote "
             "(default ./edge-quickstart)")
    add("--arch", default=DEFAULTS["arch"], metavar="ARCH", help="the architecture (default resnet18)")
    add("--epochs", type=positive_int, default=DEFAULTS["epochs"], metavar="N", help="epochs to train (default 3)")
    add("--classes", type=positive_int, default=DEFAULTS["classes"], metavar="N",
        help="the digits 0 to N-1, 2 to 10 (default 4)")
    add("--per-class", type=positive_int, default=DEFAULTS["per_class"], metavar="N",
        help=f"images per digit, {VAL_EVERY * 2} to {MAX_PER_CLASS}; every {VAL_EVERY}th is held out (default 100)")
    add("-v", "--verbose", action="store_true", help="log more, in every step")
    add_version(parser, __version__)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    if not 2 <= args.classes <= 10:
        raise UsageError(f"--classes {args.classes}: there are 10 digits; choose 2 to 10")
    if not VAL_EVERY * 2 <= args.per_class <= MAX_PER_CLASS:
        raise UsageError(f"--per-class {args.per_class}: choose {VAL_EVERY * 2} to {MAX_PER_CLASS} "
                         "(scikit-learn has 174 to 183 scans of each digit)")
    from .zoo import ARCHITECTURES

    if args.arch not in ARCHITECTURES:
        raise UsageError(f"--arch {args.arch}: choose one of {', '.join(ARCHITECTURES)}")
    return Settings(args.workdir, args.arch, args.epochs, args.classes, args.per_class, args.verbose)


def run(settings: Settings, started: float) -> int:
    """The four steps into ``settings.workdir``, then the summary on stdout; ``started``: the command's start."""
    claim_workdir(settings.workdir)
    with recording(settings.workdir):
        step(1, f"writing {settings.classes} classes of scikit-learn's digits to {settings.data}")
        write_digits(settings.data, per_class=settings.per_class, classes=settings.classes)
        step(2, f"training {settings.arch} from scratch for {_plural(settings.epochs, 'epoch')} (edge-train)")
        train_seconds = train(settings)
        step(3, f"exporting {settings.model}, checked against the eager model (edge-export)")
        export(settings)
        step(4, f"classifying the held-out images (edge-classify --json > {settings.answers})")
        records = classify(settings)
    print(summary(settings, time.perf_counter() - started, train_seconds, records), flush=True)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, code = parse_arguments(build_parser(), argv)
    if args is None:
        return code
    started = time.perf_counter()
    _log_to_stderr(args.verbose)
    try:
        return run(settings_from(args), started)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except StepFailed as exc:
        return _fail(str(exc), exc.code)
    except ImportError as exc:  # torch, onnx or scikit-learn
        return _fail(f"needs the export and test extras: pip install -e '.[all]' in the edge-classifier checkout "
                     f"({exc})", EXIT_USAGE)
    except OSError as exc:  # a read-only or full disk under --workdir
        return _fail(f"{exc.filename or args.workdir}: {exc.strerror or exc}", EXIT_USAGE)


def _log_to_stderr(verbose: bool) -> None:
    """Our own logger only: the root logger is each command's (edge-train sets its format and level)."""
    log.handlers = [logging.StreamHandler(sys.stderr)]
    log.handlers[0].setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
