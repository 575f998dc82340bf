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

Several sources (``--sources``) are several :class:`Lane` s of one loop: each step takes the newest frame
of every source that has one, taking turns past ``--max-batch`` (a video file read on demand is asked for
its next frame first, and the step waits for it), and runs them as one batch; each lane
keeps its own smoothing, times and outputs. A source that fails for good ends alone; one that hangs
ends alone too, but the watchdog is fed no more, so a service is restarted with fresh captures.
"""


import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np

from edge.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EdgeError, one_line, print_error
from edge.model.classify import Classifier, ClassifyError, Prediction, with_threshold
from edge.model.preprocess import RoiError
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


class Lane:
    """One source's part of the loop: its frames, smoothing, times and own sinks (a video, a window), how it ended.

    ``name`` is how its results are named (``--json``'s ``source``); ``roi`` the part of its frames the model sees.
    """

    def __init__(self, source: Any, name: Optional[str] = None, roi: Optional[Tuple[int, int, int, int]] = None,
                 smooth: int = 1, times: Optional[StageTimes] = None) -> None:
        self.source = source
        self.name = name or source.name
        self.roi = roi
        self.times = times or StageTimes()
        self.smoother = Smoother(smooth)
        self.sinks: List[Sink] = []
        self.hung = False
        self.ended = False  # its source finished, failed for good or hung: no more frames are asked of it
        self.open_error: Optional[BaseException] = None  # it could not be opened (several sources: the others run)
        self.roi_error: Optional[str] = None  # its frames are smaller than its region of interest: it ends

    def active(self, limit: Optional[int]) -> bool:
        return not self.ended and (limit is None or self.times.frames + self.times.failed < limit)

    def problem(self, stopped: bool) -> Optional[Tuple[str, int]]:
        """What went wrong with this source, as (one line, exit code), or None."""
        if self.open_error is not None:
            return one_line(self.open_error), getattr(self.open_error, "code", EXIT_USAGE)
        if self.roi_error is not None:
            return self.roi_error, EXIT_USAGE
        if self.hung:
            return (f"{self.name}: no frame and no error for {STALL_S:.0f} s: the camera or stream has hung; "
                    "stopping, so that it starts afresh (systemd restarts the service)"), EXIT_FAILED
        if self.source.error and not stopped:
            return self.source.error, getattr(self.source, "error_code", EXIT_FAILED)
        if self.times.failed and not self.times.frames:  # a model that never gives usable scores classified nothing
            return f"{self.name}: none of its {self.times.failed} frames could be classified", EXIT_FAILED
        return None


def run(settings: Settings, classifier: Classifier, source: Any, open_sinks: Callable[[], List[Sink]],
        stop: Optional[threading.Event] = None, notifier: Optional[Notifier] = None,
        times: Optional["StageTimes"] = None, slot: Optional[Any] = None, arrived: Optional[threading.Event] = None
        ) -> int:
    """Classify every frame ``source`` gives until it ends or ``stop`` is set; edge-classify's exit code.

    ``source``: one source, or a list of :class:`Lane` (several sources, whose buffers set ``arrived``).
    ``open_sinks`` is called once the sources are open (a camera that is not there starts no MQTT
    client and no server). For a stream SIGINT and SIGTERM set ``stop``; a run of images keeps
    Python's Ctrl-C (exit 130) and the reader finishes its image first. ``times``: filled with the
    run's per-stage times (benchmarks read them; one source). ``slot``: an ``edge.model.swap.ModelSlot`` that
    may hand the loop a new classifier between two frames (a reload while running).
    """
    stop = stop or threading.Event()
    notifier = notifier or Notifier.from_environment()
    lanes = list(source) if isinstance(source, (list, tuple)) else [Lane(source, smooth=settings.smooth, times=times)]
    loop = Loop(settings, classifier, lanes, stop, notifier, arrived)
    loop.slot = slot
    with stop_on_signals(stop) if settings.streaming else contextlib.suppress():
        try:
            if not open_all_or_stop(lanes, stop):
                return EXIT_OK  # SIGTERM or Ctrl-C while the sources were still opening
            loop.sinks = open_sinks()
            for lane in lanes:
                if lane.open_error is None:
                    lane.source.start()
            loop.run()
        except BrokenPipeError:  # stdout's reader went away (`| head`): edge.errors.run_guarded ends quietly
            raise
        except (ValueError, OSError, cv2.error) as exc:  # an output that cannot be written, a display that fails
            print_error(f"edge-classify: {printable(one_line(exc))}")
            return EXIT_USAGE
        finally:
            notifier.stopping()
            for lane in lanes:
                lane.source.close()
            loop.close_sinks()
            notifier.close()
    for lane in lanes:
        report(lane, loop.classifier, settings)
    return loop.exit_code()


class Loop:
    """The per-frame steps: take the newest frame of every source, classify them as one batch, hand each result
    to every sink, keep time. One source is the same loop with a batch of one."""

    def __init__(self, settings: Settings, classifier: Classifier, lanes: List[Lane], stop: threading.Event,
                 notifier: Notifier, arrived: Optional[threading.Event] = None) -> None:
        self.settings = settings
        self.classifier = classifier
        self.lanes = lanes
        self.stop = stop
        self.notifier = notifier
        self.arrived = arrived or threading.Event()
        self.sinks: List[Sink] = []  # every source's results (the console, --collect, MQTT, the live view)
        self.failed = 0  # inputs that could not be classified (images)
        self.per_input = getattr(lanes[0].source, "items_are_inputs", False)  # a failure is that input's
        self.frames = 0  # classified, all sources
        self._turn = 0  # the source first in line next time (so none starves when there are more than --max-batch)
        self._progress = progress_bar(lanes[0].source) if len(lanes) == 1 else None
        self._next_stats = self._next_status = time.monotonic()
        self.slot: Optional[Any] = None  # edge.model.swap.ModelSlot: a model swapped in between frames

    @property
    def times(self) -> StageTimes:
        """The first source's times (the only one's, in a run of one source)."""
        return self.lanes[0].times

    def run(self) -> None:
        while not self.stop.is_set():
            self.adopt_model()
            waited = time.perf_counter()
            picked = self.gather()
            if picked is None:
                break
            if not picked:
                if not self.idle():
                    break
                continue
            self.step(picked, (time.perf_counter() - waited) * 1e3)
            if self._progress is not None:
                self._progress.update(len(picked))
        for lane in self.lanes:
            lane.times.finish()

    def gather(self) -> Optional[List[Tuple[Lane, Frame]]]:
        """The newest frame of each source that has one (at most --max-batch, taking turns); [] when none has
        one yet; None when no source is left."""
        active = [lane for lane in self.lanes if lane.active(self.settings.max_frames)]
        if not active:
            return None
        if len(active) == 1:
            frame = active[0].source.next(timeout=POLL_S)
            return [(active[0], frame)] if frame is not None else []
        self.arrived.clear()
        start, picked, looked = self._turn % len(active), [], 0
        order = active[start:] + active[:start]
        # A file read on demand (read-ahead 0) decodes only when asked: every one this batch is for is asked
        # first, so they decode side by side, and the batch waits (a little) for them; each frame's age is then
        # this batch's time, not also the batch before's, as a frame decoded ahead would wait.
        asked = [lane for lane in order[:self.settings.max_batch] if _ask(lane.source)]
        deadline = time.monotonic() + POLL_S
        for lane in order:
            if len(picked) >= self.settings.max_batch:
                break
            looked += 1
            wait = max(0.0, deadline - time.monotonic()) if lane in asked else 0
            frame = lane.source.next(timeout=wait)
            if frame is not None:
                picked.append((lane, frame))
        self._turn = start + looked
        if not picked:
            self.arrived.wait(POLL_S)
        return picked

    def adopt_model(self) -> None:
        """Between two frames: take the slot's new classifier, if one is ready (the old one is released)."""
        new = self.slot.adopt() if self.slot is not None else None
        if new is not None:
            self.classifier = new
            for lane in self.lanes:  # the new model's classes may differ
                lane.smoother = Smoother(self.settings.smooth)

    def idle(self) -> bool:
        """No frame from any source: end the sources that finished or hung; ping the watchdog while all that are
        left make progress (reconnecting, a slow camera). False once no source is left."""
        for lane in self.lanes:
            if lane.ended:
                continue
            if lane.source.finished:
                lane.ended = True
            elif not lane.source.alive(STALL_S):
                lane.hung = lane.ended = True
                if len(self.lanes) > 1:
                    print_error(f"edge-classify: {printable(lane.problem(False)[0])}")
        if not any(lane.active(self.settings.max_frames) for lane in self.lanes):
            return False
        if self.frames:  # never before the first frame: a camera that never delivers gets restarted
            self.watchdog()
        return True

    def watchdog(self) -> None:
        """systemd's WATCHDOG=1, only while no source has hung (a hung one needs a fresh process: systemd's)."""
        if not any(lane.hung for lane in self.lanes):
            self.notifier.watchdog()

    def step(self, picked: List[Tuple[Lane, Frame]], wait_ms: float) -> None:
        """The frames through the model and the sinks; a frame that cannot be classified is reported and skipped."""
        ready = []
        for lane, frame in picked:
            if frame.error:
                self.fail(frame.name or lane.name, frame.error)
            else:
                ready.append((lane, frame))
        for (lane, frame), outcome in zip(ready, self.infer(ready)):
            name = frame.name or lane.name
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                self.emit(lane, frame, self.finish(lane, frame, outcome, wait_ms))
            except BrokenPipeError:
                raise
            except (EdgeError, OSError, ValueError, cv2.error, MemoryError) as exc:
                if self.per_input:  # an image, or its labelled copy: that input fails
                    self.fail(name, one_line(exc, last=True))
                elif isinstance(exc, RoiError):  # its frames are smaller than its region: that source ends
                    lane.roi_error, lane.ended = f"{lane.name}: {exc}", True
                elif isinstance(exc, ClassifyError):  # one bad frame of a stream (non-finite scores): logged, counted
                    lane.times.failed += 1
                    log.warning("%s frame %d: %s", name, frame.number, exc)
                else:
                    raise

    def infer(self, ready: List[Tuple[Lane, Frame]]) -> List[Any]:
        """A prediction (or the exception it raised) per frame: several as one batch where the model takes one."""
        classifier = self.classifier
        if len(ready) > 1 and classifier.max_batch >= len(ready):
            try:
                return list(classifier.classify_many([f.image for _, f in ready], [lane.roi for lane, _ in ready]))
            except (EdgeError, ValueError, cv2.error, MemoryError):
                pass  # one frame spoils the batch: each on its own below, so only that one fails
        outcomes: List[Any] = []
        for lane, frame in ready:
            try:
                if frame.batch is not None:
                    outcomes.append(classifier.classify_prepared(frame.batch, frame.ms))
                elif classifier.fixed_batch:  # the one batch shape the engine was built for
                    outcomes.append(classifier.classify_many([frame.image], [lane.roi])[0])
                else:
                    outcomes.append(classifier.classify(frame.image, lane.roi))
            except (EdgeError, OSError, ValueError, cv2.error, MemoryError) as exc:
                outcomes.append(exc)
        return outcomes

    def finish(self, lane: Lane, frame: Frame, prediction: Prediction, wait_ms: float) -> Prediction:
        """The source's smoothing and the threshold on a raw prediction; the wait and decode times added."""
        if self.settings.smooth > 1:
            prediction = self.classifier.prediction_from_probabilities(lane.smoother(prediction.probabilities),
                                                                       prediction.ms)
        prediction = with_threshold(prediction, self.settings.threshold)
        prediction.ms.update(wait=wait_ms, decode=frame.read_ms)
        return prediction

    def emit(self, lane: Lane, frame: Frame, prediction: Prediction) -> None:
        """Hand the result to every sink (the output stage), then count it and tell systemd."""
        started = time.perf_counter()
        times = lane.times
        age_ms = (time.monotonic() - frame.captured) * 1e3
        name = frame.name or lane.name
        number = frame.number if self.per_input else times.frames
        record = (frame_record(name, number, prediction, age_ms, lane.source.dropped) if self.settings.streaming
                  else image_record(name, prediction))
        result = Result(name, number, frame, prediction, record, times.fps(), age_ms, dict(prediction.ms),
                        show_fps=self.settings.streaming)
        for sink in self.sinks + lane.sinks:
            result.stages["output"] = (time.perf_counter() - started) * 1e3  # what the sinks before took
            sink.write(result)
        times.add(dict(prediction.ms, output=(time.perf_counter() - started) * 1e3), age_ms)
        if frame.image is not None:
            times.last_image = frame.image
        self.frames += 1
        self.tell(lane, prediction)

    def tell(self, lane: Lane, prediction: Prediction) -> None:
        """systemd's READY (first frame), WATCHDOG and STATUS; the periodic stats line."""
        if self.frames == 1:
            self.notifier.ready(f"classifying {', '.join(printable(l.name) for l in self.lanes)}")
        self.watchdog()
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self.notifier.status(self.status_line(lane, prediction))
        if self.settings.stats_interval and now >= self._next_stats:
            for each in self.lanes:
                if each.times.frames > 1:
                    prefix = f"{printable(each.name)}: " if len(self.lanes) > 1 else ""
                    log.info("%s%s | dropped %d", prefix, each.times.summarize_window(), each.source.dropped)
            self._next_stats = now + self.settings.stats_interval

    def status_line(self, lane: Lane, prediction: Prediction) -> str:
        """systemd's STATUS: the label, FPS and drops of the one source; with several, a count and each one's FPS."""
        times = lane.times
        if len(self.lanes) == 1:
            rate = f" | {times.fps():.1f} fps" if times.frames > 1 else ""
            return (f"{prediction.label} {percent(prediction.score, 0)}{rate} | {times.frames} frames | "
                    f"{lane.source.dropped} dropped")
        running = [l for l in self.lanes if not l.ended]
        each = "; ".join(f"{printable(l.name)} {l.times.fps():.1f} fps" for l in running)
        return f"{len(running)} of {len(self.lanes)} sources | {self.frames} frames | {each}"[:400]

    def fail(self, name: str, reason: str) -> None:
        self.failed += 1
        print_error(f"edge-classify: {printable(name)}: {printable(reason)}")

    def close_sinks(self) -> None:
        """Close every sink even if one fails (a video that cannot be finished); the first failure is raised."""
        if self._progress is not None:
            self._progress.close()
        failure: Optional[BaseException] = None
        for sink in self.sinks + [s for lane in self.lanes for s in lane.sinks]:
            try:
                sink.close()
            except Exception as exc:  # the others must still close
                failure = failure or exc
        if failure is not None:
            raise failure

    def exit_code(self) -> int:
        """0 all done; otherwise a line per source that failed (already said for a hung one among several), and
        1, or 2 when no source could be used at all (none opened, none gave a frame)."""
        problems = [(lane, lane.problem(self.stop.is_set())) for lane in self.lanes]
        problems = [(lane, found) for lane, found in problems if found is not None]
        for lane, (line, _code) in problems:
            if not (lane.hung and len(self.lanes) > 1):
                print_error(f"edge-classify: {printable(line)}")
        if len(self.lanes) > 1 and problems:
            print_error(f"edge-classify: {len(problems)} of {len(self.lanes)} sources failed "
                        f"({', '.join(printable(lane.name) for lane, _ in problems)}); {self.frames} frames classified")
        if problems:
            codes = {code for _, (_line, code) in problems}
            return EXIT_USAGE if codes == {EXIT_USAGE} and len(problems) == len(self.lanes) else EXIT_FAILED
        return EXIT_FAILED if self.failed else EXIT_OK


def _ask(source: Any) -> bool:
    """Ask a source that reads on demand for its next frame (``Grabber.ask``); False for one that needs no asking."""
    ask = getattr(source, "ask", None)
    return bool(ask()) if ask is not None else False


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


def open_all_or_stop(lanes: List[Lane], stop: threading.Event) -> bool:
    """Open every source, each on a helper thread, watching ``stop``: False if told to stop first.

    Opening an unreachable stream blocks inside OpenCV for seconds (forever on some builds); SIGTERM
    must still end the run within a second. One source: its SourceError is raised here. Several: a source
    that cannot be opened is left out (reported at the end) and the others run; if none opens, the first
    error is raised.
    """
    failures: Dict[int, BaseException] = {}

    def open_source(index: int, source: Any) -> None:
        try:
            source.open_first()
        except BaseException as exc:  # handed to the main thread, which reports it
            failures[index] = exc

    openers = [threading.Thread(target=open_source, args=(i, lane.source), name="edge-open", daemon=True)
               for i, lane in enumerate(lanes)]
    for opener in openers:
        opener.start()
    while any(opener.is_alive() for opener in openers):
        if stop.wait(POLL_S):
            return False
    if len(failures) == len(lanes):
        raise failures[min(failures)]
    for index, exc in failures.items():
        if not isinstance(exc, EdgeError):
            raise exc
        lanes[index].open_error = exc
        lanes[index].ended = True
        print_error(f"edge-classify: {printable(one_line(exc))}; the other sources go on")
    return True


def report(lane: Lane, classifier: Classifier, settings: Settings) -> None:
    """A source's end-of-run summary line; with ``--benchmark``, the per-stage table and the model's rate alone."""
    times, source = lane.times, lane.source
    if times.frames:
        ages = np.percentile(times.history["age"], [50, 95])
        log.info("%s: %d frames at %.1f fps, frame age p50 %.0f ms p95 %.0f ms, %d dropped, %d reconnects%s",
                 lane.name, times.frames, times.fps(), ages[0], ages[1], source.dropped, source.reconnects,
                 f", {times.failed} failed" if times.failed else "")
    if not settings.benchmark or not times.frames or times.last_image is None:
        return
    alone = classify_rate(classifier, times.last_image)
    out = sys.stderr if settings.json else sys.stdout
    print(f"\n{printable(lane.name)}: {times.frames} frames, {classifier.spec.arch} {classifier.spec.precision} "
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
