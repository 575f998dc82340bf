"""``edge-export``: torchvision weights or an edge-train checkpoint -> verified ONNX / TorchScript artifacts.

    edge-export --arch mobilenet_v2 --weights mobilenet_v2-7ebf99e0.pth --precision fp16 \\
                --out mobilenet_v2.onnx --out mobilenet_v2.ts
    edge-export --checkpoint runs/ants_bees.pt --out ants_bees.onnx

Each ``--out`` is written to a temporary file, reloaded the way a device loads it, held against the
eager FP32 model on real photos, and only then renamed into place. Exit codes: 0 every artifact
written and verified; 1 some artifact disagreed with the eager model (it is not kept); 2 usage
error or a model that cannot be built.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger("edge-export")

EXTRA_HINT = "edge-export needs the export extra: pip install 'edge-classifier[export]'"
EXPORT_EXTRA_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "skimage", "matplotlib", "numpy", "PIL")


def build_parser() -> argparse.ArgumentParser:
    from .zoo import ARCHITECTURES, DEFAULT_ARCH

    parser = argparse.ArgumentParser(
        prog="edge-export",
        description="Export a torchvision classifier to self-describing ONNX / TorchScript artifacts, "
                    "each verified against the eager model.")
    parser.add_argument("--arch", default=None, metavar="ARCH",
                        help=f"one of {', '.join(ARCHITECTURES)} (default {DEFAULT_ARCH}; "
                             "taken from --checkpoint when given)")
    parser.add_argument("--weights", default="pretrained", metavar="pretrained|none|PATH",
                        help="torchvision's pretrained weights (downloaded), none (random init), or a state-dict "
                             "file such as torchvision's .pth (default pretrained)")
    parser.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="an edge-train checkpoint: arch, labels and sizes come from it")
    parser.add_argument("--labels", type=Path, metavar="FILE", help="class names, one per line")
    parser.add_argument("--num-classes", type=_positive_int, metavar="N",
                        help="replace the head with an N-class one (default: what the weights or --labels have)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                        help="weights and arithmetic precision; input stays uint8 and logits float32 (default fp16)")
    parser.add_argument("--input", dest="input_kind", choices=("uint8", "float"), default="uint8",
                        help="uint8: NHWC RGB pixels, normalised inside the graph (default); float: plain NCHW "
                             "float32 normalised input, for TensorRT 8.x / jetson-inference")
    parser.add_argument("--opset", type=_positive_int, default=None, metavar="N",
                        help="ONNX opset (default 13: loads in JetPack 4.6's TensorRT 8.2 and onnxruntime 1.11; "
                             "18 or more uses torch's new exporter)")
    parser.add_argument("--verify-images", type=Path, metavar="DIR",
                        help="photos to verify on (default: the checkpoint's val images, else built-in photos)")
    parser.add_argument("--out", type=Path, action="append", required=True, metavar="FILE",
                        help="output file; its suffix picks the format (.onnx, .ts); repeatable")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parser


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
    except ImportError:
        print(f"edge-export: {EXTRA_HINT}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message; keep our exit-code contract
        return 0 if exc.code == 0 else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="edge-export: %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except ImportError as exc:
        print(f"edge-export: {missing_module_hint(exc)}", file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as exc:  # our errors are ValueError/RuntimeError subclasses
        print(f"edge-export: {_one_line(exc)}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from .exporter import DEFAULT_OPSET, atomic_path, format_for, write_artifact
    from .load import load_checkpoint_model, load_model, read_labels_file
    from .metadata import artifact_metadata
    from .verify import reference_images, verify_artifact

    formats = [format_for(out) for out in args.out]  # reject a bad suffix before any slow work
    labels = read_labels_file(args.labels) if args.labels else None
    if args.checkpoint:
        loaded = load_checkpoint_model(args.checkpoint, labels=labels)
    else:
        loaded = load_model(args.arch or "mobilenet_v2", args.weights, num_classes=args.num_classes, labels=labels)
    images = reference_images(args.verify_images, loaded.verify_images)
    meta = artifact_metadata(arch=loaded.arch, labels=loaded.labels, input_side=loaded.input_side,
                             resize_side=loaded.resize_side, precision=args.precision, input_kind=args.input_kind,
                             source=loaded.source, mean=loaded.mean, std=loaded.std)
    opset = args.opset or DEFAULT_OPSET
    rows, failed = [], 0
    for out, fmt in _progress(list(zip(args.out, formats))):
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("exporting %s (%s, %s, %s input)", out, fmt.name, args.precision, args.input_kind)
        started = time.perf_counter()
        try:
            with atomic_path(out) as tmp:
                write_artifact(loaded.model, tmp, meta, fmt=fmt, opset=opset)
                seconds = time.perf_counter() - started
                result = verify_artifact(tmp, loaded, images, meta)
                size = tmp.stat().st_size
                if not result.ok:
                    raise _Disagrees()
        except _Disagrees:
            failed += 1
            print(f"edge-export: {out} disagrees with the eager model beyond tolerance; not written",
                  file=sys.stderr)
        label = f"{fmt.name}" + (f" opset {opset}" if fmt.suffix == ".onnx" else "")
        rows.append((str(out), label, size, seconds, result))
    _print_table(rows, args.precision, args.input_kind)
    return 1 if failed else 0


def missing_module_hint(exc: ImportError) -> str:
    """What to install: the export extra when one of its packages is missing, else the module itself
    (``--opset 18`` needs onnxscript, which a full install of the extra may still lack)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not name or name in EXPORT_EXTRA_MODULES:
        return f"{EXTRA_HINT} ({exc})"
    return f"this export needs the Python module {name!r}, which is not installed: pip install {name}"


def _progress(items: list):
    """A progress bar on stderr over the outputs, when a person is watching and there is more than one."""
    if len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc="export + verify", unit="file", file=sys.stderr, leave=False)


class _Disagrees(Exception):
    """Raised inside the atomic write so a failed artifact is discarded."""


def _print_table(rows: List[tuple], precision: str, input_kind: str) -> None:
    header = ("artifact", "format", "precision", "input", "size", "export", "top-1 agree", "max |dlogit|", "status")
    lines = [header]
    for path, fmt, size, seconds, result in rows:
        lines.append((path, fmt, precision, input_kind, f"{size / 1e6:.1f} MB", f"{seconds:.1f} s",
                      f"{result.top1_agree}/{result.images}", f"{result.max_abs_diff:.2e}",
                      "ok" if result.ok else ("METADATA" if not result.metadata_ok else "FAILED")))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(export_main())
