"""``edge-classify``: run an artifact on images, folders, globs, cameras, videos and streams.

The composition root: the command line becomes one frozen ``Settings``; here, once, the source, the
model (with its threads) and the sinks are built from it and handed to ``edge.pipeline.run``.

    edge-classify --model mobilenet_v2.onnx --image cat.jpg photos/ "shots/*.png" --topk 3
    edge-classify --model mobilenet_v2.onnx --image photos/ --json > results.jsonl
    edge-classify --model mobilenet_v2.onnx --camera 0 --display

Exit codes: 0 all done; 1 some inputs could not be classified (the rest were); 2 usage error or a
model that cannot be loaded. Errors the user can fix are one line; anything else (a bug) names itself
in one line, and with ``-v`` shows its traceback (``edge.errors``).
"""


import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence

from edge import __version__
from edge.argtypes import positive_int, roi
from edge.contract import CROP_MODES, DEFAULT_CROP
from edge.errors import EXIT_USAGE, add_version, parse_arguments, print_error, run_guarded, use_own_stderr
from edge.model.swap import add_model_swap_arguments
from edge.settings import Settings, check_settings, settings_from_args
from edge.collect.sampler import add_collect_arguments
from edge.sinks.telemetry import add_telemetry_arguments
from edge.sinks.web import add_serve_arguments

OPENCV_HINT = ("OpenCV (cv2) is not importable: on a desktop, pip install '.[runtime,desktop]' in the edge-classifier "
               "checkout ('.[runtime,opencv-headless]' without a screen); on a Jetson, "
               "use JetPack's OpenCV (sudo apt install nvidia-opencv), and in a virtual environment create it "
               "with --system-site-packages so it sees that cv2 (python3 -m venv --system-site-packages ENV)")
DECODE_MARGIN = 2  # a reduced JPEG decode keeps at least this many times the model's resize side
READ_AHEAD = 1  # frames or images read ahead of the model where that pays (see plan_concurrency)
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
    parser.add_argument("--image", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    parser.add_argument("--camera", type=int, action="append", metavar="N",
                        help="a V4L2 camera index (/dev/videoN); repeat for several cameras")
    parser.add_argument("--source", action="append", metavar="[NAME=]URI",
                        help="csi://N, /dev/videoN, a video file, rtsp:// or http:// stream, or a GStreamer pipeline; "
                             "repeat for several sources, classified in one batch")
    parser.add_argument("--sources", type=Path, metavar="FILE",
                        help="sources from a file, one per line: [NAME=]URI [roi=X,Y,W,H]")
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
    add_telemetry_arguments(parser)
    add_serve_arguments(parser)
    add_model_swap_arguments(parser)
    add_collect_arguments(parser)
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
    group.add_argument("--crop", choices=CROP_MODES, default=DEFAULT_CROP,
                       help="how a frame becomes the model's square: center (default: torchvision's, a 16:9 frame "
                            "keeps its middle 49%%), full (all of it, squeezed) or letterbox (all of it, smaller, "
                            "mean-colour borders); see docs/classify.md")
    group.add_argument("--width", type=int, metavar="W", help="ask the camera for frames W pixels wide")
    group.add_argument("--height", type=int, metavar="H", help="ask the camera for frames H pixels high")
    group.add_argument("--fps", type=float, metavar="F", help="ask the camera for F frames per second")
    group.add_argument("--csi-resize", action="store_true",
                       help="csi://: scale frames to the model's resize size in the Jetson's video hardware "
                            "(frees the CPU; not PIL's filter, so a little less parity: see the README)")
    group.add_argument("--max-batch", type=int, default=8, metavar="N",
                       help="with several sources, classify at most N frames in one run of the model (default 8); "
                            "the sources take turns, so none starves")
    group.add_argument("--roi", type=roi, metavar="X,Y,W,H",
                       help="classify only this part of the frame (each source of the command line; a sources file "
                            "gives one per line)")
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
    """What is wrong with the flags given (``edge-service install`` checks the flags it will start with)."""
    return check_settings(settings_from_args(args))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, code = parse_arguments(build_parser(), argv)
    if args is None:
        return code
    settings = settings_from_args(args)
    return run_guarded("edge-classify", lambda: classify(settings), verbose=settings.verbose)


def console_main() -> None:
    """The ``edge-classify`` command: :func:`main`, with our stderr on its own descriptor (so a decoder's
    redirected fd 2 never swallows a line of ours), and ended at once if a capture thread is stuck in a
    read that cannot be interrupted (a thread left inside OpenCV at interpreter exit aborts the process)."""
    use_own_stderr()
    code = main()
    from edge.sources.capture import stuck_readers

    if stuck_readers():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


class Concurrency(NamedTuple):
    """How much is read ahead of the model, and how many cores its CPU runtime leaves for that reading."""

    read_ahead: int
    spare_cores: int


def classify(settings: Settings, stop: Optional[threading.Event] = None) -> int:
    """Build the source, the model and the sinks from ``settings`` and run the loop (until ``stop``, too)."""
    _setup_logging(settings)
    problem = check_settings(settings)
    if problem:
        return _fail(problem)
    try:
        import cv2  # noqa: F401
    except ImportError:
        return _fail(OPENCV_HINT)
    from edge.model.backends import gpu_expected
    from edge.model.defaults import ensure_default_model
    from edge.sources.imagecheck import DEFAULT_MAX_PIXELS, limit_opencv_decoder

    max_pixels = settings.max_pixels or DEFAULT_MAX_PIXELS
    limit_opencv_decoder(max_pixels)  # before the first decode: OpenCV reads it once
    from edge.sources.sourcelist import SourceListError

    try:  # a bad sources file is said before the model loads (a TensorRT build takes minutes)
        entries = _source_entries(settings) if settings.streaming else []
    except SourceListError as exc:
        return _fail(str(exc))
    if settings.streaming:  # a `systemctl reload` while the model loads is made after, instead of ending the run
        from edge.model.swap import hold_reloads

        hold_reloads()
    model = settings.model or ensure_default_model()
    items = _image_items(settings)
    plan = plan_concurrency(settings, items, gpu_expected(model, settings.backend, settings.device))
    classifier = _open_model(settings, model, plan)
    if settings.streaming:
        return run_stream(settings, classifier, plan, stop or threading.Event(), model=model, entries=entries)
    return run_images(settings, classifier, items, plan, max_pixels)


def plan_concurrency(settings: Settings, items: Sequence, gpu: bool) -> Concurrency:
    """Read-ahead and the model's spare cores, decided once, before the model loads (its pool is sized then).

    A stream: a video file is read one frame ahead with a GPU (decoding beside inference); on a CPU
    not at all, since decoding ahead competes with the model for the same cores and adds a frame of
    age. A live source keeps only its newest frame whatever this says. Images: one is decoded and
    preprocessed ahead with a GPU, or on a CPU from about 720p up (the model then leaves a core to the
    reader; below that it was a wash); not with ``--output``, where each waiting image would hold its
    full-size picture; never for a single image. The measurements behind these: docs/performance.md.
    """
    if settings.streaming:
        depth = settings.read_ahead if settings.read_ahead is not None else (READ_AHEAD if gpu else 0)
        return Concurrency(depth, 0)
    if len(items) < 2:
        depth = 0
    elif settings.read_ahead is not None:
        depth = settings.read_ahead
    elif settings.output is not None:
        depth = 0
    else:
        depth = READ_AHEAD if gpu or _first_image_pixels(items) >= READ_AHEAD_MIN_PIXELS else 0
    return Concurrency(depth, 1 if depth and not gpu else 0)


def _first_image_pixels(items: Sequence) -> int:
    from edge.sources.images import header_pixels

    first = next((item.path for item in items if item.path is not None and not item.error), None)
    return (header_pixels(first) or 0) if first is not None else 0


def _image_items(settings: Settings) -> List:
    if settings.streaming:
        return []
    from edge.sources.images import expand_inputs

    return expand_inputs(settings.image, exclude=settings.output)


def _open_model(settings: Settings, model: Path, plan: Concurrency) -> Any:
    from edge.model.backends import runs_on_cpu
    from edge.model.classify import Classifier

    classifier = Classifier.open(model, backend=settings.backend, device=settings.device, labels=settings.labels,
                                 topk=settings.topk, threads=settings.threads, spare_cores=plan.spare_cores,
                                 crop=settings.crop)
    spec, provider = classifier.spec, classifier.backend.provider
    log.info("%s: %s, %d classes, input %s %dpx (resize %d), %s, on %s", model, spec.arch, spec.num_classes,
             spec.input_kind, spec.input_side, spec.resize_side, spec.precision, provider)
    if spec.precision == "fp16" and runs_on_cpu(provider):  # told once a run; to a person at a terminal by default
        log.log(logging.WARNING if sys.stderr.isatty() else logging.INFO,"%s is an FP16 model running on the CPU, which has no FP16 arithmetic: an FP32 export "
                    "(edge-export --precision fp32) runs several times faster here", model.name)
    return classifier


def run_images(settings: Settings, classifier: Any, items: List, plan: Concurrency, max_pixels: int,
               times: Any = None) -> int:
    """A list of images through the loop: a line (or JSON line) each, labelled copies with ``--output``."""
    from edge import pipeline
    from edge.collect.sampler import Collector
    from edge.sinks.console import ConsoleSink
    from edge.sinks.files import LabelledImages, OutputError, output_targets
    from edge.sources.images import ImageSource

    try:
        targets = output_targets(settings.output, items)
    except OutputError as exc:
        return _fail(str(exc))
    drawing = settings.output is not None or settings.benchmark or settings.collect is not None
    source = ImageSource(items, max_pixels=max_pixels, read_ahead=plan.read_ahead,
                         prepare=classifier.prepare if plan.read_ahead else None, keep_image=drawing,
                         min_side=DECODE_MARGIN * classifier.spec.resize_side)

    def open_sinks() -> List:
        sinks: List = [ConsoleSink(settings.json, settings.topk, every_result=True)]
        if settings.output is not None:
            sinks.append(LabelledImages(targets))
        if settings.collect is not None:
            sinks.append(Collector(settings.collect, settings.model))
        return sinks

    log.debug("%d images, %d read ahead of the model", len(items), plan.read_ahead)
    return pipeline.run(settings, classifier, source, open_sinks, times=times)


def run_stream(settings: Settings, classifier: Any, plan: Concurrency, stop: threading.Event, times: Any = None,
               model: Optional[Path] = None, entries: Optional[List] = None) -> int:
    """Cameras, videos or streams through the loop (several in one batch), with the sinks the flags ask for,
    until they end or ``stop``. ``entries``: the sources as :func:`_source_entries` read them (read here if
    not given)."""
    from edge import pipeline
    from edge.service.notify import Notifier
    from edge.sources.capture import Grabber, Reconnect, open_capture
    from edge.sources.sourcelist import SourceListError, unique

    try:
        entries = _source_entries(settings) if entries is None else entries
        specs = _stream_specs(settings, classifier, entries)
    except SourceListError as exc:
        return _fail(str(exc))
    problem = next(filter(None, (_stream_problem(settings, spec) for spec in specs)), None)
    if problem:
        return _fail(problem)
    levels = source_levels(entries, specs)
    outputs = _video_outputs(settings.output, levels, specs)
    notifier = Notifier.from_environment()
    tries = settings.reconnect
    reconnect = Reconnect((None if notifier.enabled else 5) if tries is None else (tries or None))
    several = len(specs) > 1
    arrived = threading.Event() if several else None
    # Several sources read as one does (plan_concurrency): on a CPU a file decodes only when the loop asks for
    # its frame (it asks every source of a batch at once), so no frame waits decoded through the batch before
    # its own; with a GPU one frame ahead, decoding beside inference.
    names = unique([entry.name or spec.name for entry, spec in zip(entries, specs)])  # --json's, the metrics'
    lanes = [pipeline.Lane(Grabber(spec, open_capture, reconnect=reconnect, loop=settings.loop,
                                   on_status=notifier.status, read_ahead=plan.read_ahead, arrived=arrived),
                           name, entry.roi, settings.smooth) for name, entry, spec in zip(names, entries, specs)]
    if times is not None:
        lanes[0].times = times
    batch = _fixed_batch(classifier, len(lanes), settings.max_batch)
    if batch:
        classifier.fix_batch(batch)
    slot = _model_slot(settings, classifier, plan, model, batch)

    def open_sinks() -> List:
        return _stream_sinks(settings, classifier, lanes, outputs, stop, slot, levels)

    if slot is None:
        return pipeline.run(settings, classifier, lanes, open_sinks, stop=stop, notifier=notifier, arrived=arrived)
    from edge.model.swap import reload_on_sighup

    slot.start()
    try:
        with reload_on_sighup(slot):
            return pipeline.run(settings, classifier, lanes, open_sinks, stop=stop, notifier=notifier, slot=slot,
                                arrived=arrived)
    finally:
        slot.close()


def _source_entries(settings: Settings) -> List:
    """The sources as given: cameras, --source flags, then the --sources file's lines (SourceListError)."""
    from edge.sources.sourcelist import SourceListError, read_sources_file, source_entries

    listed = read_sources_file(settings.sources) if settings.sources is not None else []
    # A --roi with --csi-resize is refused by edge.settings; a line of the file with its own roi, here.
    scaled = next((entry for entry in listed if entry.roi is not None), None) if settings.csi_resize else None
    if scaled is not None:
        raise SourceListError(f"{scaled.uri}: its roi is in the camera's pixels; with --csi-resize the frames "
                              "arrive scaled: use one or the other")
    return source_entries(settings.camera, settings.source, listed, settings.roi)


def _stream_specs(settings: Settings, classifier: Any, entries: Sequence) -> List:
    """Each source parsed (``edge.sources.capture.SourceSpec``); a SourceListError names the one that cannot be."""
    from edge.sources.capture import SourceError, parse_source
    from edge.sources.sourcelist import SourceListError

    specs = []
    for entry in entries:
        try:
            specs.append(parse_source(camera=entry.camera, source=None if entry.camera is not None else entry.uri,
                                      width=settings.width, height=settings.height, fps=settings.fps,
                                      csi_resize=classifier.spec.resize_side if settings.csi_resize else None))
        except SourceError as exc:
            raise SourceListError(str(exc)) from None
    return specs


def _video_outputs(output: Optional[Path], levels: Sequence[str], specs: Sequence) -> List[Optional[Path]]:
    """``--output`` per source: the path itself for one; for several, PATH's stem plus each source's name
    (``out.mp4`` -> ``out-door.mp4``), or files in a folder (``videos/`` -> ``videos/door.avi``)."""
    from edge.sinks.files import check_not_an_input

    if output is None:
        return [None] * len(specs)
    if len(specs) == 1:
        paths = [output]
    elif output.suffix:
        paths = [output.with_name(f"{output.stem}-{name}{output.suffix}") for name in levels]
    else:
        paths = [output / f"{name}.avi" for name in levels]
    check_not_an_input(paths, [Path(str(spec.target)) for spec in specs if spec.kind == "file"])
    return paths


def source_levels(entries: Sequence, specs: Sequence) -> List[str]:
    """Each source's name for files and topics: its NAME, else a short one (``csi0``, ``door``), made distinct."""
    from edge.sources.sourcelist import short_name, unique

    return unique([entry.name or short_name(spec.name) for entry, spec in zip(entries, specs)])


def _stream_sinks(settings: Settings, classifier: Any, lanes: List, outputs: List[Optional[Path]],
                  stop: threading.Event, slot: Any, levels: List[str]) -> List:
    """The shared sinks (console, telemetry, live view, --collect); each source's own (video, window) on its lane."""
    from edge.collect.sampler import Collector
    from edge.sinks.console import ConsoleSink
    from edge.sinks.files import LabelledVideo
    from edge.sinks.overlay import Window
    from edge.sinks.telemetry import Telemetry
    from edge.sinks.web import LiveView, ServeOptions

    for lane, path in zip(lanes, outputs):
        if path is not None:
            lane.sinks.append(LabelledVideo(path, lambda g=lane.source: g.source_fps or g.spec.fps or 30.0))
        if settings.display:
            lane.sinks.append(Window(settings.fullscreen, stop, lane.name if len(lanes) > 1 else None))
    sinks: List = [ConsoleSink(settings.json, settings.topk, every_result=False)]
    names = [lane.name for lane in lanes]
    several = dict(zip(names, levels)) if len(lanes) > 1 else None
    telemetry = Telemetry.open(settings.telemetry, names, classifier, stop, several)
    if telemetry is not None:
        for lane in lanes:  # the metrics' drops and reconnects, per source
            telemetry.watch(lane.name, lane.source)
        sinks.append(telemetry)
        if slot is not None:
            slot.listeners.append(telemetry.model_changed)
            if settings.mqtt_allow_model_updates and telemetry.publisher is not None:
                telemetry.publisher.listen(f"{telemetry.publisher.target.prefix}/{telemetry.publisher.name}/"
                                           "model/set", slot.order)
    live = LiveView.open(ServeOptions.from_args(settings), names, classifier,
                         telemetry.metrics if telemetry is not None else None)
    if live is not None:
        for lane in lanes:
            live.watch(lane.name, lane.source)
        sinks.append(live)
        if slot is not None:
            slot.listeners.append(live.model_changed)
    if settings.collect is not None:
        sinks.append(Collector(settings.collect, settings.model))
        if slot is not None:
            slot.listeners.append(sinks[-1].model_changed)
        if live is not None:
            live.review_dir = settings.collect.dir  # the /review page
    return sinks


def _fixed_batch(classifier: Any, sources: int, max_batch: int) -> Optional[int]:
    """The one batch size to run with several sources where the runtime builds per shape (TensorRT), else None."""
    if sources < 2 or classifier.max_batch < 2 or "tensorrt" not in classifier.backend.provider.lower():
        return None
    return min(sources, max_batch)


def _model_slot(settings: Settings, classifier: Any, plan: Concurrency, model: Optional[Path],
                batch: Optional[int] = None) -> Any:
    """Where a reloaded model comes from (SIGHUP, systemctl reload, --watch-model): edge.model.swap."""
    if model is None:
        return None
    from edge.model.classify import Classifier
    from edge.model.swap import ModelSlot

    def load(path: Path) -> Any:
        loaded = Classifier.open(path, backend=settings.backend, device=settings.device, labels=settings.labels,
                                 topk=settings.topk, threads=settings.threads, spare_cores=plan.spare_cores,
                                 crop=settings.crop)
        if batch and loaded.max_batch > 1:  # a swapped-in model's engine is built for the same batch, off the loop
            loaded.fix_batch(batch)
        return loaded

    return ModelSlot.from_environment(classifier, model, load, settings)


def _stream_problem(settings: Settings, spec: Any) -> Optional[str]:
    """What cannot work with this source (found once it is known: a file or a live one)."""
    from edge.sinks.overlay import opencv_has_gui

    if settings.loop and spec.live:
        return f"--loop replays a video file; {spec.name} is a live source"
    if settings.read_ahead is not None and spec.live:
        return f"--read-ahead applies to video files; {spec.name} is live (it keeps only the newest frame)"
    if settings.display and not opencv_has_gui():
        return ("--display: this OpenCV has no GUI support (opencv-python-headless): pip uninstall "
                "opencv-python-headless, then pip install '.[desktop]' in the edge-classifier checkout; "
                "or use --output FILE")
    return None


def _setup_logging(settings: Settings) -> None:
    """Warnings for image runs; for streams also the provider and the periodic FPS line. ``-v`` adds debug."""
    level = (logging.ERROR if settings.quiet else logging.DEBUG if settings.verbose
             else logging.INFO if settings.streaming else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edge-classify: %(message)s"))
    logging.basicConfig(handlers=[handler])
    logging.getLogger().setLevel(level)
    try:
        import cv2

        # OpenCV's own warnings ("can't open camera by index") would duplicate our one-line errors.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING if settings.verbose
                                      else cv2.utils.logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        pass


def _fail(message: str) -> int:
    print_error(f"edge-classify: {message}")
    return EXIT_USAGE


if __name__ == "__main__":
    console_main()
