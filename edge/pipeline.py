"""The one loop: frames from a source -> the model -> every sink, each stage timed, until there is a reason to stop.

Images, video files, cameras and streams all come through here; ``edge.cli`` builds the four parts::

    code = run(settings, classifier, source, open_sinks, stop=threading.Event())

A source hands over frames in order (an image list, a video file) or only its newest frame (a live
source: the stale ones are dropped and counted). Each frame is stamped when it is read, so its age
when its label comes out is known: that, not the model's time alone, is the lag a user sees. A frame
that could not be read (an image that is not one) carries its error: the loop reports it on one line
and goes on, and the run exits 1. Every ``--stats-interval`` seconds it logs the FPS, per-stage
milliseconds, frame age p50/p95 and drops; under systemd it reports READY, WATCHDOG pings and a STATUS
line (``edge.service.notify``). For a stream, SIGINT and SIGTERM only set an event; the source and
the sinks are released in ``finally``. A live source whose read hangs past ``STALL_S`` ends the run
(exit 1): systemd restarts the service with a fresh capture, instead of a thread leaking per hang.
"""


import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional

import cv2
import numpy as np

from edge.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EdgeError, one_line, print_error
from edge.model.classify import Classifier, ClassifyError, Prediction, with_threshold
from edge.service.notify import Notifier
from edge.settings import Settings
from edge.sinks import Result, Sink
from edge.sinks.console import percent, printable
from edge.sources.frames import Frame

log = logging.getLogger("edge-classify")

POLL_S = 0.1  # how often an idle loop looks at the stop event (SIGTERM ends a run well within a second)
STALL_S = 10.0  # a live source silent this long, without an error, is hung: the run ends
STATUS_EVERY_S = 2.0
STAGES = ("wait", "decode", "preprocess", "infer", "topk", "output")
IMAGE_MS = ("decode", "preprocess", "infer")  # the times an image's --json line carries
HISTORY = 10_000  # frames kept for the end-of-run table: bounded, since a service runs for months
TIMED = STAGES + ("age",)


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


@dataclass
class StageTimes:
    """Per-stage milliseconds and frame ages: the periodic log line's window, and the last ``HISTORY`` frames."""

    history: Dict[str, Deque[float]] = field(default_factory=lambda: {s: deque(maxlen=HISTORY) for s in TIMED})
    recent: Dict[str, List[float]] = field(default_factory=lambda: {s: [] for s in TIMED})
    frames: int = 0
    failed: int = 0  # frames the model could not classify (non-finite scores): each logged, none emitted
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

    def summarize_window(self) -> str:
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


def frame_record(source: str, number: int, prediction: Prediction, age_ms: float, dropped: int) -> Dict:
    """A stream frame's result as ``--json`` prints it (and MQTT publishes it)."""
    captured = time.time() - age_ms / 1e3
    return {"source": source, "frame": number, "time": round(captured, 3), **prediction.to_dict(),
            "age_ms": round(age_ms, 1), "dropped": dropped}


def image_record(source: str, prediction: Prediction) -> Dict:
    """An image's result as ``--json`` prints it: its name, the prediction, and the decode/preprocess/infer ms."""
    record = {"source": source, **prediction.to_dict()}
    record["ms"] = {k: round(prediction.ms.get(k, 0.0), 3) for k in IMAGE_MS}
    return record


def run(settings: Settings, classifier: Classifier, source: Any, open_sinks: Callable[[], List[Sink]],
        stop: Optional[threading.Event] = None, notifier: Optional[Notifier] = None,
        times: Optional["StageTimes"] = None, slot: Optional[Any] = None) -> int:
    """Classify every frame ``source`` gives until it ends or ``stop`` is set; edge-classify's exit code.

    ``open_sinks`` is called once the source is open (a camera that is not there starts no MQTT
    client and no server). For a stream SIGINT and SIGTERM set ``stop``; a run of images keeps
    Python's Ctrl-C (exit 130) and the reader finishes its image first. ``times``: filled with the
    run's per-stage times (benchmarks read them). ``slot``: an ``edge.model.swap.ModelSlot`` that may hand
    the loop a new classifier between two frames (a reload while running).
    """
    stop = stop or threading.Event()
    notifier = notifier or Notifier.from_environment()
    loop = Loop(settings, classifier, source, stop, notifier, times or StageTimes())
    loop.slot = slot
    with stop_on_signals(stop) if settings.streaming else contextlib.suppress():
        try:
            if not open_first_or_stop(source, stop):
                return EXIT_OK  # SIGTERM or Ctrl-C while the source was still opening
            loop.sinks = open_sinks()
            source.start()
            loop.run()
        except BrokenPipeError:  # stdout's reader went away (`| head`): edge.errors.run_guarded ends quietly
            raise
        except (ValueError, OSError, cv2.error) as exc:  # an output that cannot be written, a display that fails
            print_error(f"edge-classify: {printable(one_line(exc))}")
            return EXIT_USAGE
        finally:
            notifier.stopping()
            source.close()
            loop.close_sinks()
            notifier.close()
    report(loop.times, source, loop.classifier, settings)
    return loop.exit_code()


class Loop:
    """The per-frame steps: take a frame, classify it, hand the result to every sink, keep time."""

    def __init__(self, settings: Settings, classifier: Classifier, source: Any, stop: threading.Event,
                 notifier: Notifier, times: StageTimes) -> None:
        self.settings = settings
        self.classifier = classifier
        self.source = source
        self.stop = stop
        self.notifier = notifier
        self.sinks: List[Sink] = []
        self.times = times
        self.failed = 0  # inputs that could not be classified (images)
        self.per_input = getattr(source, "items_are_inputs", False)  # an image list: a failure is that input's
        self.hung = False
        self._smooth = Smoother(settings.smooth)
        self._progress = progress_bar(source)
        self._next_stats = self._next_status = time.monotonic()
        self.slot: Optional[Any] = None  # edge.model.swap.ModelSlot: a model swapped in between frames

    def run(self) -> None:
        limit = self.settings.max_frames
        while not self.stop.is_set() and (limit is None or self.times.frames + self.times.failed < limit):
            self.adopt_model()
            waited = time.perf_counter()
            frame = self.source.next(timeout=POLL_S)
            if frame is None:
                if self.source.finished or not self.idle():
                    break
                continue
            self.step(frame, (time.perf_counter() - waited) * 1e3)
            if self._progress is not None:
                self._progress.update()
        self.times.finish()

    def adopt_model(self) -> None:
        """Between two frames: take the slot's new classifier, if one is ready (the old one is released)."""
        new = self.slot.adopt() if self.slot is not None else None
        if new is not None:
            self.classifier = new
            self._smooth = Smoother(self.settings.smooth)  # the new model's classes may differ

    def idle(self) -> bool:
        """No frame yet: ping the watchdog while the source makes progress; False once it has hung."""
        if self.source.alive(STALL_S):  # reconnecting or waiting for a slow camera, not hung
            if self.times.frames:  # never before the first frame: a camera that never delivers gets restarted
                self.notifier.watchdog()
            return True
        self.hung = True
        return False

    def step(self, frame: Frame, wait_ms: float) -> None:
        """One frame through the model and the sinks; a frame that cannot be classified is reported and skipped."""
        name = frame.name or self.source.name
        if frame.error:
            self.fail(name, frame.error)
            return
        try:
            prediction = self.classify(frame, wait_ms)
            self.emit(name, frame, prediction)
        except BrokenPipeError:
            raise
        except (EdgeError, OSError, ValueError, cv2.error, MemoryError) as exc:
            if self.per_input:  # an image, or its labelled copy: that input fails
                self.fail(name, one_line(exc, last=True))
            elif isinstance(exc, ClassifyError):  # one bad frame of a stream (non-finite scores): logged, counted
                self.times.failed += 1
                log.warning("%s frame %d: %s", name, frame.number, exc)
            else:
                raise

    def classify(self, frame: Frame, wait_ms: float) -> Prediction:
        if frame.batch is not None:
            prediction = self.classifier.classify_prepared(frame.batch, frame.ms)
        else:
            prediction = self.classifier.classify(frame.image)
        if self.settings.smooth > 1:
            prediction = self.classifier.prediction_from_probabilities(self._smooth(prediction.probabilities),
                                                                       prediction.ms)
        prediction = with_threshold(prediction, self.settings.threshold)
        prediction.ms.update(wait=wait_ms, decode=frame.read_ms)
        return prediction

    def emit(self, name: str, frame: Frame, prediction: Prediction) -> None:
        """Hand the result to every sink (the output stage), then count it and tell systemd."""
        started = time.perf_counter()
        age_ms = (time.monotonic() - frame.captured) * 1e3
        number = frame.number if self.per_input else self.times.frames
        record = (frame_record(name, number, prediction, age_ms, self.source.dropped) if self.settings.streaming
                  else image_record(name, prediction))
        result = Result(name, number, frame, prediction, record, self.times.fps(), age_ms, dict(prediction.ms),
                        show_fps=self.settings.streaming)
        for sink in self.sinks:
            result.stages["output"] = (time.perf_counter() - started) * 1e3  # what the sinks before took
            sink.write(result)
        stages = dict(prediction.ms, output=(time.perf_counter() - started) * 1e3)
        self.times.add(stages, age_ms)
        if frame.image is not None:
            self.times.last_image = frame.image
        self.tell(prediction)

    def tell(self, prediction: Prediction) -> None:
        """systemd's READY (first frame), WATCHDOG and STATUS; the periodic stats line."""
        times = self.times
        if times.frames == 1:
            self.notifier.ready(f"classifying {self.source.name}")
        self.notifier.watchdog()
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            rate = f" | {times.fps():.1f} fps" if times.frames > 1 else ""
            self.notifier.status(f"{prediction.label} {percent(prediction.score, 0)}{rate} | {times.frames} frames | "
                                 f"{self.source.dropped} dropped")
        if self.settings.stats_interval and now >= self._next_stats:
            if times.frames > 1:
                log.info("%s | dropped %d", times.summarize_window(), self.source.dropped)
            self._next_stats = now + self.settings.stats_interval

    def fail(self, name: str, reason: str) -> None:
        self.failed += 1
        print_error(f"edge-classify: {printable(name)}: {printable(reason)}")

    def close_sinks(self) -> None:
        """Close every sink even if one fails (a video that cannot be finished); the first failure is raised."""
        if self._progress is not None:
            self._progress.close()
        failure: Optional[BaseException] = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # the others must still close
                failure = failure or exc
        if failure is not None:
            raise failure

    def exit_code(self) -> int:
        if self.hung:
            print_error(f"edge-classify: {printable(self.source.name)}: no frame and no error for {STALL_S:.0f} s: "
                        "the camera or stream has hung; stopping, so that it starts afresh (systemd restarts "
                        "the service)")
            return EXIT_FAILED
        if self.source.error and not self.stop.is_set():
            print_error(f"edge-classify: {printable(self.source.error)}")
            return getattr(self.source, "error_code", EXIT_FAILED)
        if self.times.failed and not self.times.frames:  # a model that never gives usable scores classified nothing
            print_error(f"edge-classify: {printable(self.source.name)}: none of its {self.times.failed} frames could "
                        "be classified")
            return EXIT_FAILED
        return EXIT_FAILED if self.failed else EXIT_OK


def progress_bar(source: Any) -> Any:
    """A progress bar on a terminal for a run of several images (tqdm, where installed), else None."""
    count = len(getattr(source, "items", ()))
    if count < 2 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=count, unit="img", file=sys.stderr, leave=False)


def open_first_or_stop(source: Any, stop: threading.Event) -> bool:
    """Open the source on a helper thread, watching ``stop``: False if told to stop first.

    Opening an unreachable stream blocks inside OpenCV for seconds (forever on some builds); SIGTERM
    must still end the run within a second. A SourceError from the open is raised here.
    """
    failure: List[BaseException] = []

    def open_source() -> None:
        try:
            source.open_first()
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


def report(times: StageTimes, source: Any, classifier: Classifier, settings: Settings) -> None:
    """The end-of-run summary line; with ``--benchmark``, the per-stage table and the model's rate alone."""
    if times.frames:
        ages = np.percentile(times.history["age"], [50, 95])
        log.info("%s: %d frames at %.1f fps, frame age p50 %.0f ms p95 %.0f ms, %d dropped, %d reconnects%s",
                 source.name, times.frames, times.fps(), ages[0], ages[1], source.dropped, source.reconnects,
                 f", {times.failed} failed" if times.failed else "")
    if not settings.benchmark or not times.frames or times.last_image is None:
        return
    alone = classify_rate(classifier, times.last_image)
    out = sys.stderr if settings.json else sys.stdout
    print(f"\n{printable(source.name)}: {times.frames} frames, {classifier.spec.arch} {classifier.spec.precision} "
          f"on {classifier.backend.provider}\n", file=out)
    print("\n".join(times.table()), file=out)
    print(f"\n| measure | value |\n|---|---:|\n| frames classified per second, whole loop | {times.fps():.1f} |\n"
          f"| the model alone (preprocess + infer + top-k, one frame over and over) | {alone:.1f} |\n"
          f"| the loop reached | {times.fps() / alone:.0%} of the model's own rate (the rest: reading, "
          f"waiting for frames, output) |\n| frames dropped (a live source's stale frames) | {source.dropped} |",
          file=out, flush=True)


def classify_rate(classifier: Classifier, image: np.ndarray, seconds: float = 2.0) -> float:
    """Frames per second of preprocess + infer + top-k alone, on one of the run's frames."""
    classifier.classify(image)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 5:
        classifier.classify(image)
        count += 1
    return count / (time.perf_counter() - started)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
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
