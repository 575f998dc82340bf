"""The capture loop: capture -> preprocess -> infer -> top-k -> output, each step timed, until told to stop.

``edge-classify --camera 0`` / ``--source URI`` land here through :func:`run_stream`::

    stop = threading.Event()
    options = StreamOptions(source="clip.mp4", json=True)     # or StreamOptions.from_args(args)
    code = run_stream(options, classifier, stop)    # 0 when stopped, at end of file or --max-frames

The loop classifies the newest frame of a live source (the grabber drops the stale ones and counts
them), or every frame of a video file in order. Each frame is stamped when it is read, so its age
when its label comes out is known: that, not the model's time alone, is the lag a user sees.
Every ``--stats-interval`` seconds it logs the FPS, per-stage milliseconds, frame age p50/p95 and
drops; under systemd it reports READY, WATCHDOG pings and a STATUS line through ``edge.notify``.
SIGINT and SIGTERM only set an event; the camera, window and video are released in ``finally``.
"""


import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterator, List, Optional

import cv2
import numpy as np

from . import sources
from .backends import BackendError
from .classify import Classifier, ClassifyError, Prediction, with_threshold
from .fleet import FleetError, FleetOptions, FleetOutputs
from .notify import Notifier
from .outpaths import check_not_an_input
from .output import VideoSink, draw_label, format_line, json_line
from .sources import Frame, Grabber, Reconnect, SourceError, SourceSpec

log = logging.getLogger("edge-classify")

EXIT_OK, EXIT_SOURCE_LOST, EXIT_USAGE = 0, 1, 2
POLL_S = 0.1  # how often an idle loop looks at the stop event (SIGTERM ends a run well within a second)
STALL_S = 10.0  # a reader silent this long is hung: stop the watchdog pings so systemd restarts us
STATUS_EVERY_S = 2.0
STAGES = ("wait", "decode", "preprocess", "infer", "topk", "output")
WINDOW = "edge-classify"


@dataclass
class StreamOptions:
    """What the loop reads and does, from the command line (see ``edge.cli``)."""

    camera: Optional[int] = None  # --camera N, or else --source URI
    source: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    fps: Optional[float] = None
    json: bool = False
    display: bool = False
    fullscreen: bool = False
    output: Optional[str] = None
    loop: bool = False
    max_frames: Optional[int] = None
    smooth: int = 1
    threshold: float = 0.0
    reconnect: Optional[int] = None  # tries to get a lost live source back; 0: forever; None: see reconnect_policy
    stats_interval: float = 5.0
    benchmark: bool = False
    topk: int = 1
    fleet: Optional[FleetOptions] = None  # --mqtt, --metrics-port (edge.fleet)
    read_ahead: Optional[int] = None  # a video file's queue depth; None: sources.default_read_ahead
    csi_resize: bool = False  # csi://: nvvidconv scales to the model's resize size

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "StreamOptions":
        return cls(camera=args.camera, source=args.source, width=args.width, height=args.height, fps=args.fps,
                   json=args.json, display=args.display, fullscreen=args.fullscreen,
                   output=str(args.output) if args.output else None,
                   loop=args.loop, max_frames=args.max_frames, smooth=args.smooth, threshold=args.threshold,
                   reconnect=args.reconnect, stats_interval=args.stats_interval, benchmark=args.benchmark,
                   topk=args.topk, fleet=FleetOptions.from_args(args), read_ahead=args.read_ahead,
                   csi_resize=args.csi_resize)


class Smoother:
    """The mean of the last ``n`` frames' probabilities, so a live label does not flicker."""

    def __init__(self, n: int) -> None:
        self._window: Deque[np.ndarray] = deque(maxlen=n)
        self._sum: Optional[np.ndarray] = None

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        if self._sum is None:
            self._sum = np.zeros_like(probabilities, dtype=np.float64)
        if len(self._window) == self._window.maxlen:
            self._sum -= self._window[0]
        self._window.append(probabilities)
        self._sum += probabilities
        return self._sum / len(self._window)


HISTORY = 10_000  # frames kept for the end-of-run table: bounded, since a service runs for months
TIMED = STAGES + ("age",)


@dataclass
class StageTimes:
    """Per-stage milliseconds and frame ages: the periodic log line's window, and the last ``HISTORY`` frames."""

    history: Dict[str, Deque[float]] = field(default_factory=lambda: {s: deque(maxlen=HISTORY) for s in TIMED})
    recent: Dict[str, List[float]] = field(default_factory=lambda: {s: [] for s in TIMED})
    frames: int = 0
    first_frame_at: Optional[float] = None
    ended: Optional[float] = None
    last_image: Optional[np.ndarray] = field(default=None, repr=False)
    _window_started: float = field(default_factory=time.monotonic)

    def add(self, stages: Dict[str, float], age_ms: float) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        for name in TIMED:
            value = age_ms if name == "age" else stages.get(name, 0.0)
            self.history[name].append(value)
            self.recent[name].append(value)
        self.frames += 1

    def fps(self) -> float:
        """Frames per second since the first frame (start-up and model warm-up excluded), until ``finish()``."""
        if self.first_frame_at is None or self.frames < 2:
            return 0.0
        return (self.frames - 1) / max((self.ended or time.monotonic()) - self.first_frame_at, 1e-9)

    def finish(self) -> None:
        self.ended = time.monotonic()

    def window(self) -> str:
        """One log line over the frames since the last call: FPS, mean ms per stage, frame age p50/p95."""
        now, ages = time.monotonic(), self.recent["age"]
        rate = len(ages) / max(now - self._window_started, 1e-9)
        line = "no frames"
        if ages:
            stages = " ".join(f"{s} {np.mean(self.recent[s]):.1f}" for s in STAGES)
            p50, p95 = np.percentile(ages, [50, 95])
            line = f"{rate:.1f} fps | ms: {stages} | frame age p50 {p50:.0f} p95 {p95:.0f} ms"
        self.recent = {s: [] for s in TIMED}
        self._window_started = now
        return line

    def table(self) -> List[str]:
        """The end-of-run per-stage table (markdown), as ``--benchmark`` prints it."""
        lines = ["| stage | mean ms | p50 ms | p95 ms |", "|---|---:|---:|---:|"]
        for name, values in self.history.items():
            if values:
                p50, p95 = np.percentile(values, [50, 95])
                lines.append(f"| {'frame age' if name == 'age' else name} | {np.mean(values):.2f} | {p50:.2f} | "
                             f"{p95:.2f} |")
        return lines


class StreamOutput:
    """Per frame: a JSON line, or a human line when the label changes; the overlay on a window and a video."""

    def __init__(self, options: StreamOptions, source: str, stop: threading.Event,
                 video_fps: Callable[[], float]) -> None:
        self.options = options
        self.source = source
        self.stop = stop
        self._video_fps = video_fps
        self.video: Optional[VideoSink] = None
        self._last_label: Optional[str] = None
        if options.output:
            self.video = VideoSink(options.output, fps=1.0)  # the rate is set when the first frame is known
        self._window_open = False

    def emit(self, number: int, frame: Frame, prediction: Prediction, fps: float, age_ms: float,
             dropped: int, record: Optional[Dict] = None) -> None:
        if self.options.json:
            record = record or frame_record(self.source, number, prediction, age_ms, dropped)
            print(json_line(record), flush=True)
        elif prediction.label != self._last_label:
            note = f"[frame {number}" + (f", {fps:.1f} fps]" if fps else "]")
            print(format_line(self.source, prediction, self.options.topk, note), flush=True)
        self._last_label = prediction.label
        if self.video is None and not self.options.display:
            return
        overlay = draw_label(frame.image, prediction, fps)
        if self.video is not None:
            if self.video.frames == 0:
                self.video.fps = self._video_fps()
            self.video.write(overlay)
        if self.options.display:
            self._show(overlay)

    def _show(self, overlay: np.ndarray) -> None:
        if not self._window_open:
            open_window(overlay.shape[1], overlay.shape[0], self.options.fullscreen)
            self._window_open = True
        cv2.imshow(WINDOW, overlay)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
            self.stop.set()

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
        if self.options.display:
            cv2.destroyAllWindows()


def frame_record(source: str, number: int, prediction: Prediction, age_ms: float, dropped: int) -> Dict:
    """A frame's result as ``--json`` prints it (and MQTT publishes it)."""
    captured = time.time() - age_ms / 1e3
    return {"source": source, "frame": number, "time": round(captured, 3), **prediction.to_dict(),
            "age_ms": round(age_ms, 1), "dropped": dropped}


def open_window(width: int, height: int, fullscreen: bool) -> None:
    """The display window, opened on the first frame: at the frame's size, or filling the screen.

    A resizable window (WINDOW_NORMAL) opens at the GUI's default size (400x300) and shrinks the picture
    into it, and Qt's toolbar and status bar (WINDOW_GUI_EXPANDED, its default) take more of it: so no
    toolbar, and the window is sized to the frame. Fullscreen is asked for after that, so a window
    manager that ignores it still shows the frame at its size.
    """
    flags = cv2.WINDOW_NORMAL | getattr(cv2, "WINDOW_KEEPRATIO", 0) | getattr(cv2, "WINDOW_GUI_NORMAL", 0)
    cv2.namedWindow(WINDOW, flags)
    cv2.resizeWindow(WINDOW, int(width), int(height))
    if fullscreen:
        cv2.setWindowProperty(WINDOW, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)


def run_stream(options: StreamOptions, classifier: Classifier, stop: Optional[threading.Event] = None) -> int:
    """Classify ``options.camera`` / ``options.source`` until stopped; the exit code of edge-classify."""
    stop = stop or threading.Event()
    notifier = Notifier.from_environment()
    try:
        spec = sources.parse_source(camera=options.camera, source=options.source, width=options.width,
                                    height=options.height, fps=options.fps,
                                    csi_resize=classifier.spec.resize_side if options.csi_resize else None)
        _check_options(options, spec)
    except (SourceError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    read_ahead = (sources.default_read_ahead(classifier.backend.provider) if options.read_ahead is None
                  else options.read_ahead)
    grabber = Grabber(spec, sources.open_capture, reconnect=reconnect_policy(options, notifier), loop=options.loop,
                      on_status=notifier.status, read_ahead=read_ahead)
    output: Optional[StreamOutput] = None
    fleet: Optional[FleetOutputs] = None
    with _stop_on_signals(stop):
        try:
            if not open_first_or_stop(grabber, stop):
                return EXIT_OK  # SIGTERM or Ctrl-C while the source was still opening
            fleet = FleetOutputs.open(options.fleet, spec.name, classifier)
            if fleet is not None:
                fleet.watch(grabber)
            output = StreamOutput(options, spec.name, stop,
                                  video_fps=lambda: grabber.source_fps or spec.fps or 30.0)
            grabber.start()
            times = classify_frames(classifier, grabber, output, options, notifier, stop, fleet)
        except (SourceError, BackendError, FleetError) as exc:  # no camera; a model that loads but cannot run
            return _fail(str(exc), EXIT_USAGE)
        except BrokenPipeError:  # stdout's reader went away (`| head`): edge.errors.run_guarded ends quietly
            raise
        except (ValueError, OSError, cv2.error) as exc:  # an output that cannot be written, a display that fails
            return _fail(str(exc).strip().splitlines()[0], EXIT_USAGE)
        finally:
            notifier.stopping()
            grabber.close()
            try:
                if output is not None:
                    output.close()  # may raise (a video that cannot be finished): the rest must still close
            finally:
                if fleet is not None:
                    fleet.close()
                notifier.close()
    _report(times, grabber, classifier, options, spec)
    if grabber.error and not stop.is_set():
        return _fail(grabber.error, EXIT_SOURCE_LOST)
    return EXIT_OK


def classify_frames(classifier: Classifier, grabber: Grabber, output: StreamOutput, options: StreamOptions,
                    notifier: Notifier, stop: threading.Event, fleet: Optional[FleetOutputs] = None) -> StageTimes:
    """The loop itself: the grabber's frames through classify, smoothing and output until a reason to stop."""
    smooth = Smoother(options.smooth)
    times = StageTimes()
    next_stats = next_status = time.monotonic()
    stalled = False
    while not stop.is_set() and (options.max_frames is None or times.frames < options.max_frames):
        waited = time.perf_counter()
        frame = grabber.next(timeout=POLL_S)
        if frame is None:
            if grabber.finished:
                break
            if grabber.alive(STALL_S):  # reconnecting or waiting for a slow camera, not hung
                notifier.watchdog()
                stalled = False
            elif not stalled:  # under systemd the missing pings now get us restarted
                stalled = True
                log.warning("%s: no frame and no error for %.0f s; the camera or stream seems stuck",
                            grabber.spec.name, STALL_S)
                if notifier.watchdog_interval is None:  # no systemd watchdog to restart us: recover here
                    grabber.restart_stuck_reader()
            continue
        wait_ms = (time.perf_counter() - waited) * 1e3
        try:
            prediction = classifier.classify(frame.image)
        except ClassifyError as exc:
            log.warning("%s frame %d: %s", grabber.spec.name, frame.number, exc)
            continue
        if options.smooth > 1:
            prediction = classifier.prediction_from_probabilities(smooth(prediction.probabilities), prediction.ms)
        prediction = with_threshold(prediction, options.threshold)
        prediction.ms.update(wait=wait_ms, decode=frame.read_ms)
        emitted = time.perf_counter()
        age_ms = (time.monotonic() - frame.captured) * 1e3
        # One record for --json and MQTT, so both carry the same capture time.
        record = frame_record(grabber.spec.name, times.frames, prediction, age_ms, grabber.dropped) \
            if fleet is not None else None
        output.emit(times.frames, frame, prediction, times.fps(), age_ms, grabber.dropped, record)
        stages = dict(prediction.ms, output=(time.perf_counter() - emitted) * 1e3)
        if fleet is not None and record is not None:  # MQTT and metrics: in the output stage, never waiting
            fleet.frame(record, prediction, stages, age_ms, times.fps())
            stages["output"] = (time.perf_counter() - emitted) * 1e3
        times.add(stages, age_ms)
        times.last_image = frame.image
        if times.frames == 1:
            notifier.ready(f"classifying {grabber.spec.name}")
        notifier.watchdog()
        now = time.monotonic()
        if now >= next_status:
            next_status = now + STATUS_EVERY_S
            rate = f" | {times.fps():.1f} fps" if times.frames > 1 else ""
            notifier.status(f"{prediction.label} {prediction.score:.0%}{rate} | {times.frames} frames | "
                            f"{grabber.dropped} dropped")
        if options.stats_interval and now >= next_stats:
            if times.frames > 1:
                log.info("%s | dropped %d", times.window(), grabber.dropped)
            next_stats = now + options.stats_interval
    times.finish()
    return times


def open_first_or_stop(grabber: Grabber, stop: threading.Event) -> bool:
    """Open the source on a helper thread, watching ``stop``: False if told to stop first.

    Opening an unreachable stream blocks inside OpenCV for seconds (forever on some builds); SIGTERM
    must still end the run within a second. A SourceError from the open is raised here.
    """
    failure: List[BaseException] = []

    def open_source() -> None:
        try:
            grabber.open_first()
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)

    opener = threading.Thread(target=open_source, name="edge-open", daemon=True)
    opener.start()
    while opener.is_alive():
        if stop.wait(POLL_S):
            return False
    if failure:
        raise failure[0]
    return True


def reconnect_policy(options: StreamOptions, notifier: Notifier) -> Reconnect:
    """``--reconnect N`` tries (0: forever); by default forever under systemd (it has no one to ask), else 5."""
    if options.reconnect is None:
        return Reconnect(None if notifier.enabled else 5)
    return Reconnect(options.reconnect or None)


def _report(times: StageTimes, grabber: Grabber, classifier: Classifier, options: StreamOptions,
            spec: SourceSpec) -> None:
    """The end-of-run summary line; with ``--benchmark``, the per-stage table and the model's rate alone."""
    if times.frames:
        ages = np.percentile(times.history["age"], [50, 95])
        log.info("%s: %d frames at %.1f fps, frame age p50 %.0f ms p95 %.0f ms, %d dropped, %d reconnects",
                 spec.name, times.frames, times.fps(), ages[0], ages[1], grabber.dropped, grabber.reconnects)
    if not options.benchmark or not times.frames:
        return
    alone = classify_rate(classifier, times.last_image)
    out = sys.stderr if options.json else sys.stdout
    print(f"\n{spec.name}: {times.frames} frames, {classifier.spec.arch} {classifier.spec.precision} on "
          f"{classifier.backend.provider}\n", file=out)
    print("\n".join(times.table()), file=out)
    print(f"\n| measure | value |\n|---|---:|\n| loop | {times.fps():.1f} fps |\n"
          f"| preprocess + infer alone | {alone:.1f} fps |\n| loop / alone | {times.fps() / alone:.0%} |\n"
          f"| dropped frames | {grabber.dropped} |", file=out, flush=True)


def classify_rate(classifier: Classifier, image: np.ndarray, seconds: float = 2.0) -> float:
    """Frames per second of preprocess + infer + top-k alone, on one of the run's frames."""
    classifier.classify(image)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 5:
        classifier.classify(image)
        count += 1
    return count / (time.perf_counter() - started)


def _check_options(options: StreamOptions, spec: SourceSpec) -> None:
    if options.loop and spec.live:
        raise ValueError(f"--loop replays a video file; {spec.name} is a live source")
    if options.output and spec.kind == "file":
        check_not_an_input([Path(options.output)], [Path(str(spec.target))])
    if options.smooth < 1:
        raise ValueError(f"--smooth must be at least 1 frame, not {options.smooth}")
    if options.read_ahead is not None and (options.read_ahead < 0 or spec.live):
        raise ValueError(f"--read-ahead must be 0 or more, not {options.read_ahead}" if options.read_ahead < 0 else
                         f"--read-ahead applies to video files; {spec.name} is live (it keeps only the newest frame)")
    if not 0.0 <= options.threshold <= 1.0:
        raise ValueError(f"--threshold is a probability between 0 and 1, not {options.threshold}")
    if options.max_frames is not None and options.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, not {options.max_frames}")
    if options.fullscreen and not options.display:
        raise ValueError("--fullscreen goes with --display")
    if options.display and not sources.opencv_has_gui():
        raise ValueError("--display: this OpenCV has no GUI support (opencv-python-headless): pip uninstall "
                         "opencv-python-headless, then pip install '.[desktop]' in the edge-classifier checkout; "
                         "or use --output FILE")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the loop ends within ``POLL_S`` or one frame); old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(message: str, code: int) -> int:
    print(f"edge-classify: {message}", file=sys.stderr, flush=True)
    return code
