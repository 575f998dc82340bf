"""``edge-export`` and ``edge-train``: argument parsing for the host side's two commands, and their mains.

    edge-export --arch mobilenet_v2 --weights mobilenet_v2-7ebf99e0.pth --precision fp16 \\
                --out mobilenet_v2.onnx --out mobilenet_v2.ts
    edge-export --checkpoint runs/ants_bees.pt --out ants_bees.onnx
    edge-train --data photos/ --epochs 25 --out runs/photos.pt
    edge-export --weights pretrained --target all --out mobilenet_v2.onnx   # + .jetson/.deepstream/.tensorrt.onnx

edge-export writes each ``--out`` to a temporary file, runs it through the device's own path (edge's
preprocessing and backend, ``export.verify``) on real photos against the eager torchvision pipeline,
and only then renames it into place. Exit codes: 0 every artifact written and verified; 1 some
artifact disagreed with the eager model (it is not kept); 2 usage error or a model that cannot be
built. edge-train's run is ``export.train.train``; its exit codes are in that module's docstring.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from edge import contract
from edge.argtypes import (fraction, non_negative_float, non_negative_int, positive_float, positive_int,
                            probability)
from edge.errors import EXIT_USAGE, EdgeError, add_version, parse_arguments, run_guarded

from . import __version__
from .errors import ExportError

log = logging.getLogger("edge-export")

EXTRA_HINT = "{} needs the export extra: pip install '.[export]' in the edge-classifier checkout"
EXPORT_EXTRA_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "skimage", "matplotlib", "numpy", "PIL")


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
    parser.add_argument("--num-classes", type=positive_int, metavar="N",
                        help="replace the head with an N-class one (default: what the weights or --labels have)")
    parser.add_argument("--precision", choices=contract.PRECISIONS, default="fp16",
                        help="weights and arithmetic precision; input stays uint8 and logits float32 (default fp16)")
    parser.add_argument("--input", dest="input_kind", choices=contract.INPUT_KINDS, default=contract.INPUT_UINT8,
                        help="uint8: NHWC RGB pixels, normalised inside the graph (default); float: plain NCHW "
                             "float32 normalised input (the tensorrt and jetson-inference targets pick their own)")
    parser.add_argument("--opset", type=positive_int, default=None, metavar="N",
                        help="ONNX opset (default 13: loads in JetPack 4.6's TensorRT 8.2 and onnxruntime 1.11; "
                             "18 or more uses torch's new exporter)")
    parser.add_argument("--verify-images", type=Path, metavar="DIR",
                        help="photos to verify on (default: the checkpoint's val images, else built-in photos)")
    parser.add_argument("--tolerance", type=probability, metavar="P",
                        help="the largest softmax probability difference from the eager model accepted on a "
                             "verification photo by the artifact alone (default 0.001 for fp32, 0.02 for fp16)")
    parser.add_argument("--out", type=Path, action="append", required=True, metavar="FILE",
                        help="output file; its suffix picks the format (.onnx, .ts) and target (.jetson.onnx, "
                             ".deepstream.onnx, .tensorrt.onnx); repeatable")
    parser.add_argument("--target", action="append", choices=target_names(), metavar="TARGET",
                        help="the runtime to export for: " + ", ".join(target_names()) + " (all: the first four); "
                             "repeatable: one --out per target, or one --out to name them all after")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more; a traceback for an unexpected error")
    add_version(parser, __version__)
    return parser


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    return _host_main("edge-export", build_parser, _run, argv)


def _host_main(prog: str, build, run, argv: Optional[Sequence[str]]) -> int:
    """The same frame for edge-export and edge-train: the extra's hint, parsing, logging, one-line errors."""
    try:
        parser = build()
    except ImportError as exc:  # torch, torchvision or onnx is missing
        print(f"{prog}: {EXTRA_HINT.format(prog)} ({exc})", file=sys.stderr)
        return EXIT_USAGE
    args, code = parse_arguments(parser, argv)
    if args is None:
        return code
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{prog}: %(message)s", stream=sys.stderr)
    return run_guarded(prog, lambda: _naming_missing_modules(prog, run, args), verbose=args.verbose,
                       expected=(ExportError, EdgeError))


def _run(args: argparse.Namespace) -> int:
    from .exporter import DEFAULT_OPSET, atomic_path, format_for, write_artifact
    from .load import load_checkpoint_model, load_model, read_labels_file
    from .metadata import artifact_metadata
    from .outputs import check_outputs
    from .target_files import (refuse_overwriting_inputs, run_commands, side_file_paths, side_file_texts,
                               write_side_files, write_target_onnx)
    from .target_verify import runtime_device_path, verify_runtime
    from .targets import resolve_outputs
    from .verify import default_tolerance, eager_reference, edge_device_path, verification_frames, verify_path
    from .zoo import DEFAULT_ARCH

    check_outputs(args.out)  # a folder given as --out, before it names the files of --target all
    pairs = resolve_outputs(args.out, args.target or [])  # reject a bad suffix or target before any slow work
    outputs = [path for out, target in pairs for path in [out, *side_file_paths(out, target)]]
    check_outputs(outputs)
    refuse_overwriting_inputs(outputs, [p for p in (args.weights, args.checkpoint, args.labels) if p])
    for out, target in pairs:
        if args.opset and target.opset and args.opset != target.opset:
            log.warning("%s: the %s target is always opset %d (TensorRT 8.2 parses no newer); --opset %d is "
                        "for onnxruntime and torchscript", out, target.name, target.opset, args.opset)
    labels = read_labels_file(args.labels) if args.labels else None
    if args.checkpoint:
        loaded = load_checkpoint_model(args.checkpoint, labels=labels)
        if loaded.init:  # trained with --init: what changed against that model
            from .train.init_model import label_changes

            print(f"labels: {label_changes(loaded.labels, loaded.init['classes'], loaded.init['file'])}")
    else:
        loaded = load_model(args.arch or DEFAULT_ARCH, args.weights, num_classes=args.num_classes, labels=labels)
    for out, target in pairs:  # labels a runtime's label file cannot hold fail here, before any export
        side_file_texts(out, target, loaded.labels, args.precision, loaded.input_side)
    frames = [frame for _, frame in verification_frames(args.verify_images, loaded.verify_images)]
    reference = eager_reference(loaded, frames)
    rows, commands, failed = [], [], 0
    for out, target in _progress(pairs):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a path under a file, a read-only disk
            raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
        precision = "fp32" if target.fp32_graph else args.precision
        input_kind = target.input_kind or args.input_kind
        tolerance = args.tolerance if args.tolerance is not None else default_tolerance(precision)
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
                    write_target_onnx(loaded, tmp, target, {contract.Key.TARGET: target.name,
                                                            contract.Key.EXPORTER: meta[contract.Key.EXPORTER],
                                                            contract.Key.SOURCE: loaded.source})
                seconds = time.perf_counter() - started
                if target.self_describing:
                    result = verify_path(frames, reference, edge_device_path(tmp), tolerance=tolerance,
                                         expected_meta=meta)
                else:
                    result = verify_runtime(frames, reference, loaded, runtime_device_path(tmp, target, loaded),
                                            tolerance=tolerance)
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


def _naming_missing_modules(prog: str, run, args: argparse.Namespace) -> int:
    try:
        return run(args)
    except ImportError as exc:
        raise ExportError(missing_module_hint(prog, exc)) from None


def missing_module_hint(prog: str, exc: ImportError) -> str:
    """What to install: the export extra when one of its packages is missing, else the module itself
    (``--opset 18`` needs onnxscript, which a full install of the extra may still lack)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not name or name in EXPORT_EXTRA_MODULES:
        return f"{EXTRA_HINT.format(prog)} ({exc})"
    return f"this export needs the Python module {name!r}, which is not installed: pip install {name}"


def _progress(items: list):
    """A progress bar on stderr over the outputs, when a person is watching and there is more than one."""
    if len(items) < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc="export + verify", unit="file", file=sys.stderr, leave=False)


class _Disagrees(Exception):
    """Raised inside the atomic write so a failed artifact is discarded."""


def _print_table(rows: List[tuple]) -> None:
    """One row per artifact: its runtime's path against the eager model (probabilities) and torchvision (pixels)."""
    header = ("artifact", "target", "format", "precision", "input", "size", "export", "top-1 agree", "max |dprob|",
              "artifact alone", "pixels mean/max", "= PyTorch top-1", "status")
    lines = [header]
    for path, target, kind, precision, input_kind, size, seconds, result in rows:
        # Through edge's own crop, top-1 agreement IS agreement with the PyTorch pipeline.
        pytorch = getattr(result, "pytorch_agree", result.top1_agree)
        lines.append((path, target, kind, precision, input_kind, f"{size / 1e6:.1f} MB", f"{seconds:.1f} s",
                      f"{result.top1_agree}/{result.images}", f"{result.max_prob_diff:.4f}",
                      f"{result.artifact_prob_diff:.1e} (<= {result.tolerance:g})",
                      f"{result.mean_pixel_diff:.2f}/{result.max_pixel_diff:.0f}", f"{pytorch}/{result.images}",
                      "ok" if result.ok else ("METADATA" if not result.metadata_ok else "FAILED")))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for row in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``edge-train``: fine-tune on an image folder (the run itself is ``export.train.train.run``)."""
    def run(args: argparse.Namespace) -> int:
        from .train.train import run as train_run

        return train_run(args)

    return _host_main("edge-train", build_train_parser, run, argv)


def build_train_parser() -> argparse.ArgumentParser:
    from .train.data import DEFAULT_VAL_FRACTION
    from .train.train import DEFAULTS
    from .zoo import ARCHITECTURES, DEFAULT_ARCH

    parser = argparse.ArgumentParser(
        prog="edge-train",
        description="Fine-tune a torchvision classifier on a folder of photos (DIR/train/<class>/*, DIR/val/<class>/*, "
                    "or DIR/<class>/* split with a fixed seed) into a checkpoint edge-export turns into a model.",
        epilog="Beside --out runs/x.pt: runs/x.last.pt (latest epoch, for --resume), runs/x.metrics.json, "
               "runs/x.curves.png, runs/x.val.png. With --resume, the settings come from the checkpoint; only "
               "--data, --out, --epochs, --batch-size, --workers, --device, --amp, --sync-bn and --no-scale-lr can "
               "change; the output is --out or, for --resume runs/x.last.pt, runs/x.pt. To add classes to a "
               "deployed model and keep its labels' indices: --init runs/deployed.pt. Several processes: "
               "torchrun --nproc_per_node N -m export.train ...")
    add = parser.add_argument
    add("--data", metavar="DIR", help="the image folder: train/ and val/ with one folder per class, or only class folders")
    add("--out", metavar="CKPT", help="the checkpoint to write (the best epoch), e.g. runs/photos.pt")
    add("--arch", metavar="ARCH", help=f"one of {', '.join(ARCHITECTURES)} (default {DEFAULT_ARCH})")
    add("--weights", metavar="pretrained|none|PATH",
        help="start from torchvision's ImageNet weights (downloaded once), random initialisation, or a state-dict "
             "file or edge-train checkpoint (its head is replaced when the classes differ) (default pretrained)")
    add("--init", type=Path, metavar="MODEL",
        help="start from a deployed model: an edge-train checkpoint, or an exported .onnx/.ts whose source "
             "checkpoint is beside it; its architecture, input size and classes are kept (its classes first, in "
             "their order, new class folders appended; the head's rows matched by label)")
    add("--mode", choices=("finetune", "features"),
        help="finetune: train every layer; features: train only the new head on the frozen backbone (default finetune)")
    add("--freeze", type=non_negative_int, metavar="N", help="with finetune, freeze the first N blocks of the backbone")
    add("--epochs", type=positive_int, metavar="N", help=f"epochs to train in all (default {DEFAULTS['epochs']})")
    add("--batch-size", type=positive_int, metavar="N",
        help=f"images per step and process (default {DEFAULTS['batch_size']})")
    add("--lr", type=positive_float, metavar="LR",
        help=f"SGD learning rate for one process's batch; N processes use N x LR unless --no-scale-lr "
             f"(default {DEFAULTS['lr']})")
    add("--momentum", type=non_negative_float, metavar="M", help=f"SGD momentum (default {DEFAULTS['momentum']})")
    add("--step-size", type=positive_int, metavar="N",
        help=f"multiply the learning rate by --gamma every N epochs (default {DEFAULTS['step_size']})")
    add("--gamma", type=positive_float, metavar="G",
        help=f"what the learning rate is multiplied by every --step-size epochs (default {DEFAULTS['gamma']})")
    add("--image-size", type=positive_int, metavar="S",
        help=f"the model's input side; validation resizes to round(S / {contract.CROP_FRACTION}) and crops S (default: the "
             "architecture's, 224 or 299)")
    add("--augment", choices=("default", "none"),
        help="default: RandomResizedCrop + horizontal flip; none: the validation Resize + CenterCrop, for images "
             "that crops or mirroring would spoil (digits, text) (default default)")
    add("--val-fraction", type=fraction, metavar="F",
        help=f"without a val/ folder, the fraction of each class kept for validation (default {DEFAULT_VAL_FRACTION})")
    add("--seed", type=int, metavar="N", help="seeds the split, the initialisation and the data order (default 0)")
    add("--workers", type=non_negative_int, metavar="N",
        help="data-loading processes per training process (default min(8, CPUs / processes on this node))")
    add("--device", choices=("auto", "cuda", "cpu"), help="default auto: the GPU when torch sees one")
    add("--amp", action=argparse.BooleanOptionalAction, default=None,
        help="mixed precision: bf16 autocast (fp16 with a GradScaler on GPUs without bf16); weights stay FP32 "
             "(default on for CUDA, off on the CPU)")
    add("--sync-bn", action="store_true", default=None,
        help="with several processes (torchrun, CUDA): BatchNorm statistics over the global batch")
    add("--no-scale-lr", dest="scale_lr", action="store_false", default=None,
        help="with N processes, train at --lr itself, not N x --lr (--batch-size is per process; by default the "
             "learning rate grows with the global batch)")
    add("--resume", type=Path, metavar="CKPT", help="go on from a checkpoint, normally runs/x.last.pt")
    add("-v", "--verbose", action="store_true", help="log more; a traceback for an unexpected error")
    add_version(parser, __version__)
    return parser


if __name__ == "__main__":
    sys.exit(export_main())
