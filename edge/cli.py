"""``edge-classify``: run an artifact on images, folders, globs, cameras, videos and streams.

    edge-classify --model mobilenet_v2.onnx --image cat.jpg photos/ "shots/*.png" --topk 3
    edge-classify --model mobilenet_v2.onnx --image photos/ --json > results.jsonl
    edge-classify --model mobilenet_v2.onnx --camera 0 --display

Exit codes: 0 all done; 1 some inputs could not be classified (the rest were); 2 usage error or a
model that cannot be loaded. Errors the user can fix are one line; anything else (a bug) names itself
in one line, and with ``-v`` shows its traceback (``edge.errors``).
"""


import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

from . import __version__
from .argtypes import positive_int
from .errors import EXIT_FAILED as EXIT_SOME_FAILED
from .errors import (EXIT_OK, EXIT_USAGE, STDERR_LOCK, EdgeError, LockedStderrHandler, add_version, parse_arguments,
                     print_error, run_guarded)
from .fleet import add_fleet_arguments, check_fleet_arguments

OPENCV_HINT = ("OpenCV (cv2) is not importable: on a desktop, pip install '.[runtime,desktop]' in the edge-classifier "
               "checkout ('.[runtime,opencv-headless]' without a screen); on a Jetson, "
               "use JetPack's OpenCV (sudo apt install nvidia-opencv), and in a virtual environment create it "
               "with --system-site-packages so it sees that cv2 (python3 -m venv --system-site-packages ENV)")
DECODE_MARGIN = 2  # a reduced JPEG decode keeps at least this many times the model's resize side
IMAGE_READ_AHEAD = 1  # images decoded ahead of the model in a run of several (see image_read_ahead)
READ_AHEAD_MIN_PIXELS = 900_000  # on a CPU, images from about 1280x720 up are read ahead by default

log = logging.getLogger("edge-classify")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-classify",
        description="Classify images, folders, cameras, videos or streams with an exported model.")
    parser.add_argument("--model", type=Path, metavar="FILE",
                        help="an .onnx or .ts artifact (default: mobilenet_v2 ImageNet from $EDGE_MODEL or "
                             "~/.cache/edge-classifier/mobilenet_v2_fp16.onnx, FP32 where onnxruntime has no GPU; "
                             "built once if edge-export is here)")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--image", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    inputs.add_argument("--camera", type=int, metavar="N", help="a V4L2 camera index (/dev/videoN)")
    inputs.add_argument("--source", metavar="URI",
                        help="csi://N, /dev/videoN, a video file, rtsp:// or http:// stream, or a GStreamer pipeline")
    parser.add_argument("--labels", type=Path, metavar="FILE", help="label names, one per line (overrides the model's)")
    parser.add_argument("--topk", type=int, default=1, metavar="K", help="show the K best classes (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image or frame on stdout")
    parser.add_argument("--output", type=Path, metavar="PATH",
                        help="write the labelled image (a folder for several images) or video")
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse images whose header says more than N pixels, before decoding them "
                             "(default 100000000: 100 MP fits a 4 GB Jetson Nano)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "torchscript"), default="auto",
                        help="inference runtime (default: by the model's suffix)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where to run the model (default: the GPU when there is one)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for the model's runtime, without busy-waiting in onnxruntime (default: "
                             "the runtime's own on a CPU, all cores but one when --image reads ahead; 1 when a GPU "
                             "runs the model)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the provider, timings and more")
    parser.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    add_version(parser, __version__)
    add_stream_arguments(parser)
    add_fleet_arguments(parser)
    return parser


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the camera / video loop (``--camera``, ``--source``)."""
    group = parser.add_argument_group("cameras, videos and streams")
    group.add_argument("--display", action="store_true",
                       help="show the frames with the label in a window at the frame's size (q or Esc quits)")
    group.add_argument("--fullscreen", action="store_true", help="with --display, fill the screen (kiosks)")
    group.add_argument("--loop", action="store_true", help="replay a video file forever (demos, kiosks, soak tests)")
    group.add_argument("--max-frames", type=int, metavar="N", help="stop after classifying N frames")
    group.add_argument("--smooth", type=int, default=1, metavar="N",
                       help="average the probabilities of the last N frames (default 1: none)")
    group.add_argument("--threshold", type=float, default=0.0, metavar="P",
                       help="say 'unknown' when the best probability is below P (default 0)")
    group.add_argument("--width", type=int, metavar="W", help="ask the camera for frames W pixels wide")
    group.add_argument("--height", type=int, metavar="H", help="ask the camera for frames H pixels high")
    group.add_argument("--fps", type=float, metavar="F", help="ask the camera for F frames per second")
    group.add_argument("--csi-resize", action="store_true",
                       help="csi://: scale frames to the model's resize size in the Jetson's video hardware "
                            "(frees the CPU; not PIL's filter, so a little less parity: see the README)")
    group.add_argument("--read-ahead", type=int, metavar="N",
                       help="frames a video file is decoded ahead of the model (default: 0 when the CPU runs the "
                            "model, the least lag; 1 with a GPU, decoding beside inference; more adds lag, not "
                            "speed); live sources always keep only the newest frame. With --image: images "
                            "decoded and preprocessed ahead (default 1 for several with a GPU, or on a CPU from "
                            "720p up, the model keeping all cores but one; 0 with --output, and 0 means in turn, "
                            "the model on every core)")
    group.add_argument("--reconnect", type=_tries, metavar="N|forever",
                       help="tries to get a lost camera or stream back (default 5; forever under systemd)")
    group.add_argument("--stats-interval", type=float, default=5.0, metavar="S",
                       help="log FPS, per-stage ms, frame age and drops every S seconds (0: never; default 5)")
    group.add_argument("--benchmark", action="store_true",
                       help="at the end, print a per-stage timing table and the model's rate alone")


def _tries(text: str) -> int:
    """``--reconnect``: a count of tries; ``forever`` (or 0) for no limit."""
    if text.strip().lower() == "forever":
        return 0
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, or forever, not {text}")
    return value


def check_values(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the numbers given, whichever the input (a bad value is never silently ignored)."""
    checks = (
        (args.topk < 1, f"--topk must be at least 1, not {args.topk}"),
        (not 0.0 <= args.threshold <= 1.0, f"--threshold is a probability between 0 and 1, not {args.threshold}"),
        (args.smooth < 1, f"--smooth must be at least 1 frame, not {args.smooth}"),
        (not args.stats_interval >= 0, f"--stats-interval must be 0 (never) or more seconds, not {args.stats_interval}"),
        (args.max_frames is not None and args.max_frames < 1, f"--max-frames must be at least 1, not {args.max_frames}"),
    )
    for bad, message in checks:
        if bad:
            return message
    for flag in ("width", "height", "fps"):
        value = getattr(args, flag)
        if value is not None and not 0 < value < 100_000:
            return f"--{flag} must be a positive number, not {value}"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, code = parse_arguments(build_parser(), argv)
    if args is None:
        return code
    return run_guarded("edge-classify", lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    _setup_logging(args)
    problem = check_values(args)
    if problem:
        return _fail(problem)
    fleet_problem = check_fleet_arguments(args)
    if fleet_problem:
        return _fail(fleet_problem)
    try:
        import cv2  # noqa: F401
    except ImportError:
        return _fail(OPENCV_HINT)
    from .classify import Classifier
    from .defaults import ensure_default_model
    from .imagecheck import DEFAULT_MAX_PIXELS, limit_opencv_decoder
    from .images import expand_inputs

    args.max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    limit_opencv_decoder(args.max_pixels)  # before the first decode: OpenCV reads it once

    model = args.model or ensure_default_model()
    items = expand_inputs(args.image) if args.image else []
    labelled = args.output is not None  # full-size frames are kept for drawing: no read-ahead unless asked
    decoder_core = args.image is not None and wants_decoder_core(args.read_ahead, items, labelled)
    classifier = Classifier.open(model, backend=args.backend, device=args.device, labels=args.labels,
                                 topk=args.topk, threads=args.threads, spare_cores=1 if decoder_core else 0)
    log.info("%s: %s, %d classes, input %s %dpx (resize %d), %s, on %s", model, classifier.spec.arch,
             classifier.spec.num_classes, classifier.spec.input_kind, classifier.spec.input_side,
             classifier.spec.resize_side, classifier.spec.precision, classifier.backend.provider)
    if args.image:
        read_ahead = image_read_ahead(args.read_ahead, len(items), classifier.backend.provider, decoder_core,
                                      labelled)
        log.debug("%d images, %d read ahead of the model", len(items), read_ahead)
        return run_images(args, classifier, items, read_ahead)
    from .loop import StreamOptions, run_stream

    return run_stream(StreamOptions.from_args(args), classifier)


def wants_decoder_core(requested: Optional[int], items: List, labelled: bool = False) -> bool:
    """Whether a CPU model should leave a core to the decoder (decided before it loads: onnxruntime's
    pool is sized once): for ``--read-ahead`` 1 or more, or by default when the first image is at least
    READ_AHEAD_MIN_PIXELS (from 720p up, decoding is worth a core of its own)."""
    from .images import header_pixels

    if requested is not None and requested < 0:
        raise EdgeError(f"--read-ahead must be 0 or more, not {requested}")
    if len(items) < 2 or requested == 0 or (requested is None and labelled):
        return False
    if requested is not None:
        return True
    first = next((item.path for item in items if item.path is not None and not item.error), None)
    pixels = header_pixels(first) if first is not None else None
    return pixels is not None and pixels >= READ_AHEAD_MIN_PIXELS


def image_read_ahead(requested: Optional[int], count: int, provider: str, decoder_core: bool,
                     labelled: bool = False) -> int:
    """How many images are decoded and preprocessed ahead of the model (``--read-ahead``).

    One is enough to keep both busy: the next image decoded and preprocessed on one thread while the
    model runs on the current one. By default: with a GPU, always (the CPU work hides behind
    inference); on a CPU, when the model left the decoder a core (``wants_decoder_core``). Not with
    ``--output`` (``labelled``) unless asked: each waiting image then holds its full-size frame.
    Measured on a 2-core host (benchmarks/bench_resolution.py): 720p to 4K JPEGs ran 1.25-1.5x
    faster that way than in turn with the model on both cores; at 640x480 it was a wash with
    onnxruntime (within 10%, either way) and 1.25x slower with TorchScript, whose model loses more
    with one thread. A single image is not read ahead: the model keeps every core for it.
    """
    if count < 2:
        return 0
    if requested is not None:
        return requested
    if labelled:  # each waiting image keeps its full-size frame to draw on: up to 300 MB at 100 MP
        return 0
    from .backends import runs_on_cpu

    return IMAGE_READ_AHEAD if decoder_core or not runs_on_cpu(provider) else 0


def run_images(args: argparse.Namespace, classifier, items: List, read_ahead: int = 0) -> int:
    """Classify every image named by ``--image``; report bad ones on stderr and carry on."""
    from .outpaths import OutputError
    from .prefetch import read_ahead as ahead

    try:
        targets = output_targets(args.output, items)
    except OutputError as exc:
        return _fail(str(exc))
    jobs = list(zip(items, targets))
    # closing(): on an early exit (| head, Ctrl-C) the worker finishes its image before the interpreter goes
    with contextlib.closing(ahead(lambda job: prepare_image(args, classifier, *job), jobs, read_ahead)) as prepared:
        failed = sum(not finish_image(args, classifier, item, target, result)
                     for (item, target), result in _progress(prepared, len(jobs)))
    return EXIT_SOME_FAILED if failed else EXIT_OK


class PreparedImage(NamedTuple):
    frame: object  # the decoded BGR frame, kept for --output (None without)
    batch: object  # the model's input
    ms: Dict[str, float]  # decode and preprocess times


def prepare_image(args: argparse.Namespace, classifier, item, target: Optional[Path]) -> PreparedImage:
    """Decode and preprocess one image (on the read-ahead thread); ImageError and others for a bad one."""
    from .images import ImageError, read_image

    if item.error:
        raise ImageError(item.error)
    started = time.perf_counter()
    # A large JPEG may be decoded reduced (its DCT does the first shrink), unless the labelled copy is wanted.
    min_side = None if target is not None else DECODE_MARGIN * classifier.spec.resize_side
    frame = read_image(item.path, args.max_pixels, min_side=min_side)
    decoded = time.perf_counter()
    batch = classifier.prepare(frame)
    ms = {"decode": (decoded - started) * 1e3, "preprocess": (time.perf_counter() - decoded) * 1e3}
    # The frame is kept only to draw on: waiting in the read-ahead queue, a batch is 150 KB, a 100 MP frame 300 MB.
    return PreparedImage(frame if target is not None else None, batch, ms)


def finish_image(args: argparse.Namespace, classifier, item, target: Optional[Path], prepared) -> bool:
    """Classify a prepared image and print (and write) its result; False, with one line on stderr, if it
    or its preparation failed."""
    import cv2

    from .output import draw_label, format_line, json_line, printable, write_image_atomic

    try:
        if isinstance(prepared, BaseException):
            raise prepared
        prediction = classifier.classify_prepared(prepared.batch, prepared.ms)
        if args.json:
            ms = prediction.ms
            record = {"source": item.source, **prediction.to_dict()}
            record["ms"] = {k: round(ms[k], 3) for k in ("decode", "preprocess", "infer")}
            print(json_line(record), flush=True)
        else:
            print(format_line(item.source, prediction, args.topk), flush=True)
        if target is not None:
            write_image_atomic(target, draw_label(prepared.frame, prediction))
    except BrokenPipeError:  # stdout's reader has gone (`| head`): not this image's fault, stop the run
        raise
    except (EdgeError, OSError, ValueError, cv2.error, MemoryError) as exc:  # a bad image, an unwritable output
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print_error(f"edge-classify: {printable(item.source)}: {printable(reason)}")  # waits for a decode's fd 2
        return False
    return True


def output_targets(output: Optional[Path], items: List) -> List[Optional[Path]]:
    """The file each image's labelled copy goes to (None: not written); OutputError for an unusable --output.

    ``--output`` is a folder when there are several images or it names one (flattened names, made
    unique); a file otherwise. No target may be one of the inputs.
    """
    from .outpaths import check_image_suffix, check_not_an_input, prepare_folder, unique_names

    if output is None:
        return [None] * len(items)
    check_image_suffix(output)
    several = len(items) > 1 or any(i.from_folder for i in items)
    if several or output.is_dir() or not output.suffix:
        folder = prepare_folder(output)
        targets = [folder / name for name in unique_names([i.source for i in items])]
    else:
        prepare_folder(output.parent)
        targets = [output]
    check_not_an_input(targets, [i.path for i in items])
    return targets  # type: ignore[return-value]


def _progress(results: Iterable, count: int) -> Iterable:
    """``results`` with a progress bar on a terminal, for more than one image (tqdm, where installed)."""
    if count < 2 or not sys.stderr.isatty():
        return results
    try:
        from tqdm import tqdm
    except ImportError:
        return results
    tqdm.set_lock(STDERR_LOCK)  # it redraws while the next image may be decoding with fd 2 redirected
    return tqdm(results, total=count, unit="img", file=sys.stderr, leave=False)


def _setup_logging(args: argparse.Namespace) -> None:
    """Warnings for image runs; for streams also the provider and the periodic FPS line. ``-v`` adds debug."""
    streaming = args.image is None
    level = (logging.ERROR if args.quiet else logging.DEBUG if args.verbose
             else logging.INFO if streaming else logging.WARNING)
    handler = LockedStderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edge-classify: %(message)s"))
    logging.basicConfig(handlers=[handler])
    logging.getLogger().setLevel(level)
    try:
        import cv2

        # OpenCV's own warnings ("can't open camera by index") would duplicate our one-line errors.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING if args.verbose
                                      else cv2.utils.logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        pass


def _fail(message: str) -> int:
    print_error(f"edge-classify: {message}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
