"""``edge-export``: torchvision weights or an edge-train checkpoint -> verified ONNX / TorchScript artifacts.

    edge-export --arch mobilenet_v2 --weights mobilenet_v2-7ebf99e0.pth --precision fp16 \\
                --out mobilenet_v2.onnx --out mobilenet_v2.ts
    edge-export --checkpoint runs/ants_bees.pt --out ants_bees.onnx
    edge-export --weights pretrained --target all --out mobilenet_v2.onnx   # + .jetson/.deepstream/.tensorrt.onnx

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


def build_parser() -> argparse.ArgumentParser:
    from .targets import target_names
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
                             "float32 normalised input (the tensorrt and jetson-inference targets pick their own)")
    parser.add_argument("--opset", type=_positive_int, default=None, metavar="N",
                        help="ONNX opset (default 13: loads in JetPack 4.6's TensorRT 8.2 and onnxruntime 1.11; "
                             "18 or more uses torch's new exporter)")
    parser.add_argument("--verify-images", type=Path, metavar="DIR",
                        help="photos to verify on (default: the checkpoint's val images, else built-in photos)")
    parser.add_argument("--out", type=Path, action="append", required=True, metavar="FILE",
                        help="output file; its suffix picks the format (.onnx, .ts) and target (.jetson.onnx, "
                             ".deepstream.onnx, .tensorrt.onnx); repeatable")
    parser.add_argument("--target", action="append", choices=target_names(), metavar="TARGET",
                        help="the runtime to export for: " + ", ".join(target_names()) + " (all: the first four); "
                             "repeatable: one --out per target, or one --out to name them all after")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parser


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
    except ImportError:
        print(f"edge-export: {EXTRA_HINT}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="edge-export: %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except ImportError as exc:
        print(f"edge-export: {EXTRA_HINT} ({exc})", file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as exc:  # our errors are ValueError/RuntimeError subclasses
        print(f"edge-export: {_one_line(exc)}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from .exporter import DEFAULT_OPSET, atomic_path, format_for, write_artifact
    from .load import load_checkpoint_model, load_model, read_labels_file
    from .metadata import artifact_metadata
    from .target_files import (refuse_overwriting_inputs, run_commands, side_file_paths, side_file_texts,
                               write_side_files, write_target_onnx)
    from .target_verify import verify_target
    from .targets import resolve_outputs
    from .verify import reference_images, verify_artifact

    pairs = resolve_outputs(args.out, args.target or [])  # reject a bad suffix or target before any slow work
    refuse_overwriting_inputs([path for out, target in pairs for path in [out, *side_file_paths(out, target)]],
                              [p for p in (args.weights, args.checkpoint, args.labels) if p])
    for out, target in pairs:
        if args.opset and target.opset and args.opset != target.opset:
            log.warning("%s: the %s target is always opset %d (TensorRT 8.2 parses no newer); --opset %d is "
                        "for onnxruntime and torchscript", out, target.name, target.opset, args.opset)
    labels = read_labels_file(args.labels) if args.labels else None
    if args.checkpoint:
        loaded = load_checkpoint_model(args.checkpoint, labels=labels)
    else:
        loaded = load_model(args.arch or "mobilenet_v2", args.weights, num_classes=args.num_classes, labels=labels)
    for out, target in pairs:  # labels a runtime's label file cannot hold fail here, before any export
        side_file_texts(out, target, loaded.labels, args.precision, loaded.input_side)
    images = reference_images(args.verify_images, loaded.verify_images)
    rows, commands, failed = [], [], 0
    for out, target in _progress(pairs):
        out.parent.mkdir(parents=True, exist_ok=True)
        precision = "fp32" if target.fp32_graph else args.precision
        input_kind = target.input_kind or args.input_kind
        meta = artifact_metadata(arch=loaded.arch, labels=loaded.labels, input_side=loaded.input_side,
                                 resize_side=loaded.resize_side, precision=precision, input_kind=input_kind,
                                 source=loaded.source, mean=loaded.mean, std=loaded.std)
        opset = target.opset or args.opset or DEFAULT_OPSET
        log.info("exporting %s (%s target, %s, %s input)", out, target.name, precision, input_kind)
        started = time.perf_counter()
        try:
            with atomic_path(out) as tmp:
                if target.self_describing:
                    fmt = format_for(out)
                    write_artifact(loaded.model, tmp, meta, fmt=fmt, opset=opset)
                else:
                    write_target_onnx(loaded, tmp, target, {"target": target.name, "exporter": meta["exporter"],
                                                            "source": loaded.source})
                seconds = time.perf_counter() - started
                result = (verify_artifact(tmp, loaded, images, meta) if target.self_describing
                          else verify_target(tmp, loaded, images, target))
                size = tmp.stat().st_size
                if not result.ok:
                    raise _Disagrees()
            write_side_files(out, target, loaded.labels, args.precision, loaded.input_side)
            commands.extend(run_commands(out, target, loaded.input_side, args.precision))
        except _Disagrees:
            failed += 1
            print(f"edge-export: {out} disagrees with the eager model beyond tolerance; not written",
                  file=sys.stderr)
        kind = "TorchScript" if out.suffix.lower() == ".ts" else f"ONNX opset {opset}"
        shown_precision = precision if precision == args.precision else f"{precision} ({args.precision} engine)"
        rows.append((str(out), target.name, kind, shown_precision, target.feed_label or input_kind, size, seconds,
                     result))
    _print_table(rows)
    if commands:
        print("\nrun them:\n" + "\n".join(f"  {line}" for line in commands))
    return 1 if failed else 0


def _progress(items: list):
    """A progress bar on stderr over the outputs, when a person is watching and there is more than one."""
    if len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc="export + verify", unit="file", file=sys.stderr, leave=False)


class _Disagrees(Exception):
    """Raised inside the atomic write so a failed artifact is discarded."""


def _print_table(rows: List[tuple]) -> None:
    header = ("artifact", "target", "format", "precision", "input", "size", "export", "top-1 agree", "max |diff|",
              "= PyTorch top-1", "status")
    lines = [header]
    for path, target, kind, precision, input_kind, size, seconds, result in rows:
        # A crop-fed file's top-1 agreement IS its agreement with the PyTorch pipeline.
        pytorch = getattr(result, "pytorch_agree", result.top1_agree)
        lines.append((path, target, kind, precision, input_kind, f"{size / 1e6:.1f} MB", f"{seconds:.1f} s",
                      f"{result.top1_agree}/{result.images}", f"{result.max_abs_diff:.2e}",
                      f"{pytorch}/{result.images}",
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
