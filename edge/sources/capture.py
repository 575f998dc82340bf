"""Where live frames come from: USB and CSI cameras, video files, network streams, GStreamer pipelines.

``parse_source`` turns ``--camera N`` / ``--source URI`` into a :class:`SourceSpec`; a :class:`Grabber`
thread reads it and hands the loop frames stamped at capture::

    spec = parse_source(source="csi://0", width=1280, height=720, fps=30)
    grabber = Grabber(spec, open_capture, reconnect=Reconnect(tries=5))
    grabber.open_first()             # SourceError if the camera is not there
    grabber.start()
    frame = grabber.next(timeout=0.25)   # the newest frame (live), or the next in order (a file)

A live source keeps only the newest frame, so a slow model never works on a stale one; the frames it
overwrites are counted in ``grabber.dropped``. A video file is read in order, every frame, through a
small bounded queue (``edge.sources.frames.FrameBuffer``): ``read_ahead`` frames are decoded ahead of
the model (chosen by ``edge.cli``; a deeper queue adds its depth in frame age and no speed; 0 decodes
a frame only when the loop asks, by waiting for it or, with several sources, by ``ask``: the least
lag, no overlap). A live source that fails is reopened with
backoff, a bounded number of times or forever (``Reconnect(tries=None)``, as under systemd). The
tries count failures since frames last flowed for ``GOOD_WINDOW_S``: a stream that opens, sends a
few frames and stalls again uses them up instead of being reconnected forever. A read stuck in the
driver (OpenCV 4.1.1 has no read timeout) cannot be interrupted: the loop ends the run (exit 1, so
systemd restarts the service) rather than leaking a thread and a capture per hang.
An open is bounded too (:func:`open_capture`, ``OPEN_TIMEOUT_S``). A GStreamer pipeline is checked for
missing elements when parsed, and one that ends by itself (``num-buffers=N``, ``filesrc``...: the rule is
in :mod:`edge.sources.gstreamer`) is read like a video file: every frame in order, its end is the end.
"""


import contextlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Set, Tuple, Union

import cv2

from edge import contract
from edge.errors import EXIT_FAILED, EXIT_USAGE, EdgeError
from edge.sources import gstreamer
from edge.sources.frames import Frame, FrameBuffer
from edge.sources.imagecheck import native_warnings

log = logging.getLogger(__name__)

STREAM_OPEN_TIMEOUT_MS, STREAM_READ_TIMEOUT_MS = 10_000, 5_000
# The most an open may take, by kind (seconds; $EDGE_OPEN_TIMEOUT overrides them all): OpenCV's GStreamer
# backend never returns from a pipeline whose source sends nothing, nor OpenCV 4.1.1's FFmpeg from a
# dead RTSP server. nvargus-daemon starts a CSI camera in 1-5 s on a Nano.
OPEN_TIMEOUT_S = {"csi": 20.0, "gstreamer": 20.0, "stream": 30.0, "camera": 10.0}
OPEN_TIMEOUT_ENV = "EDGE_OPEN_TIMEOUT"
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 10.0
GOOD_WINDOW_S = 10.0  # frames flowing this long after a reconnect: the source is back, its tries are renewed
CSI_DEFAULT = (1280, 720, 30)
CSI_INTERPOLATION = 2  # nvvidconv interpolation-method: 0 nearest (its default), 1 bilinear, 2 5-tap, 3 10-tap
GSTREAMER_HINT = ("this OpenCV has no GStreamer support (pip's opencv-python wheels have none): on a Jetson use "
                  "JetPack's OpenCV (sudo apt install nvidia-opencv; in a venv, create it with "
                  "--system-site-packages and pip uninstall opencv-python opencv-python-headless)")


class SourceError(EdgeError, RuntimeError):
    """A source that cannot be opened or read; the message is one line that says what to do."""


@dataclass(frozen=True)
class SourceSpec:
    """One video source: what the user called it, what OpenCV opens, and whether it is live."""

    name: str  # as reported in the output ("source")
    kind: str  # "camera", "csi", "file", "stream" or "gstreamer"
    target: Union[int, str]  # what cv2.VideoCapture opens
    api: int  # the cv2.CAP_* backend to open it with
    width: Optional[int] = None
    height: Optional[int] = None
    fps: Optional[float] = None
    finite: bool = False  # a pipeline that ends by itself (edge.sources.gstreamer.is_finite): read as a file is

    @property
    def live(self) -> bool:
        """Live sources drop stale frames and reconnect; a video file or a finite pipeline is read in order and ends."""
        return self.kind != "file" and not self.finite


@dataclass(frozen=True)
class Reconnect:
    """How hard to try to get a lost live source back: ``tries`` attempts, or forever when ``None``."""

    tries: Optional[int] = 5

    @property
    def forever(self) -> bool:
        return self.tries is None

    def allows(self, failures: int) -> bool:
        """Whether another attempt may follow ``failures`` failed ones."""
        return self.tries is None or failures < self.tries

    @staticmethod
    def delay(failures: int) -> float:
        """The wait before the attempt that follows ``failures`` failures: 0.5 s doubling up to 10 s."""
        return min(BACKOFF_START_S * 2 ** min(failures, 16), BACKOFF_MAX_S)


def parse_source(*, camera: Optional[int] = None, source: Optional[str] = None, width: Optional[int] = None,
                 height: Optional[int] = None, fps: Optional[float] = None,
                 csi_resize: Optional[int] = None) -> SourceSpec:
    """``--camera N`` or ``--source URI`` as a :class:`SourceSpec` (SourceError for a file that is not there,
    or a pipeline with an element this GStreamer does not have).

    ``csi_resize``: for ``csi://``, let the Jetson's video hardware shrink frames so their shorter side
    is this (see :func:`csi_pipeline`); a usage error for any other source.
    """
    size = dict(width=width, height=height, fps=fps)
    if csi_resize and not re.fullmatch(r"csi://\d+", (source or "").strip()):
        raise SourceError(f"--csi-resize scales in a Jetson CSI camera's pipeline; "
                          f"{source or f'camera {camera}'} is not csi://N")
    if camera is not None:
        return SourceSpec(f"/dev/video{camera}", "camera", camera, _v4l2(), **size)
    assert source is not None
    text = source.strip()
    try:
        parsed = contract.source_kind(text)
    except contract.ContractError as exc:
        raise SourceError(str(exc)) from None
    if parsed.kind == "csi":
        _require_gstreamer("csi://")
        spec = SourceSpec(text, "csi", csi_pipeline(parsed.index, width, height, fps, csi_resize),
                          cv2.CAP_GSTREAMER, **size)
        _check_elements(spec)
        return spec
    if parsed.kind == "camera":  # /dev/videoN opens by path, a bare N by index
        if text.isdigit():
            return SourceSpec(f"/dev/video{text}", "camera", int(text), _v4l2(), **size)
        return SourceSpec(text, "camera", text, _v4l2(), **size)
    if parsed.kind == "gstreamer":
        _require_gstreamer("a GStreamer pipeline")
        spec = SourceSpec(without_password(text), "gstreamer", text, cv2.CAP_GSTREAMER, **size,
                          finite=gstreamer.is_finite(text))
        _check_elements(spec)
        return spec
    if parsed.kind == "stream":
        api = cv2.CAP_FFMPEG if _has_backend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        return SourceSpec(without_password(text), "stream", text, api, **size)
    path = Path(text)
    if not path.is_file():
        raise SourceError(f"{text}: no such video file" if not path.exists() else f"{text}: not a video file")
    return SourceSpec(text, "file", str(path), cv2.CAP_ANY, **size)


def csi_pipeline(sensor: int, width: Optional[int], height: Optional[int], fps: Optional[float],
                 resize: Optional[int] = None) -> str:
    """The Jetson CSI camera pipeline: Argus capture in NVMM, converted to BGR, newest buffer only.

    With ``resize``, nvvidconv also scales the frame (in the VIC, not on the CPU) to the size
    torchvision's ``Resize(resize)`` gives it, so the CPU only crops. Its filter is not PIL's: we ask
    for its 5-tap filter (``interpolation-method=2``; the default is nearest neighbour, which aliases);
    the parity this costs is in the README.
    """
    w, h, f = width or CSI_DEFAULT[0], height or CSI_DEFAULT[1], int(round(fps or CSI_DEFAULT[2]))
    scaler = "nvvidconv ! video/x-raw, format=BGRx"
    if resize:
        out_w, out_h = hardware_size(w, h, resize)
        scaler = (f"nvvidconv interpolation-method={CSI_INTERPOLATION} ! "
                  f"video/x-raw, width={out_w}, height={out_h}, format=BGRx")
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={w}, height={h}, "
            f"framerate={f}/1, format=NV12 ! {scaler} ! videoconvert ! "
            f"video/x-raw, format=BGR ! appsink drop=1 max-buffers=1 sync=false")


def hardware_size(width: int, height: int, resize: int) -> Tuple[int, int]:
    """``(width, height)`` after torchvision's ``Resize(resize)`` (``edge.contract.resized_size``),
    never enlarged: the video hardware only shrinks, the CPU's crop does the rest."""
    if min(width, height) <= resize:
        return width, height
    out_h, out_w = contract.resized_size(height, width, resize)
    return out_w, out_h


_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)(\S*)@")  # greedy: up to the last @ of the word
_SECRET_PROPERTY = re.compile(r"\b(user-pw|user-id|password|passwd|passphrase)=(\"[^\"]*\"|'[^']*'|\S+)",
                              re.IGNORECASE)


def without_password(text: str) -> str:
    """The name a source is shown by, with its credentials masked in every form they take.

    ``rtsp://admin:secret@cam/live`` -> ``rtsp://admin:***@cam/live`` (a password holding ``@`` or ``/``
    too: everything up to the last ``@`` of the address is the user's part), ``rtsp://token@cam`` ->
    ``rtsp://***@cam``, and in a pipeline ``user-pw=secret`` / ``user-id=admin`` -> ``user-pw=***``.
    The name goes to logs, ``--json`` lines, MQTT payloads, Prometheus labels and the live view; the
    credentials stay in the capture target only.
    """
    def userinfo(match) -> str:  # noqa: ANN001 (re.Match is 3.7+)
        user, colon, _ = match.group(2).partition(":")
        return match.group(1) + ("{}:***@".format(user) if colon else "***@")

    return _SECRET_PROPERTY.sub(r"\1=***", _URL_USERINFO.sub(userinfo, text))


def open_capture(spec: SourceSpec) -> "cv2.VideoCapture":
    """An opened ``cv2.VideoCapture`` for ``spec``, set to its size and rate (SourceError if it will not open).

    (A pipeline's elements were looked up by :func:`parse_source`, which names a missing one.) Every
    open but a video file's is bounded by :func:`open_timeout`: the open runs on a helper thread, and
    when it has not returned in time a SourceError names the likely causes. A thread stuck inside OpenCV cannot be
    stopped: it is left behind, counted by :func:`stuck_readers` (edge-classify then ends with its exit
    code through ``os._exit``, never waiting for it), and until it returns, opening the same source
    again fails at once instead of leaving one more thread per try. If it ever returns, what it opened
    is released.
    """
    if spec.kind == "file":  # FFmpeg's own complaints about a file that is no video would be a raw second line
        with native_warnings() if not log.isEnabledFor(logging.DEBUG) else contextlib.suppress():
            return _open_now(spec)
    # OpenCV's own "can't open camera by index" would double our one-line error; -v leaves fd 2 alone.
    # fd 2 is redirected around the wait, not inside the open: an open left stuck must not keep it.
    quiet = spec.kind == "camera" and OPENCV_PRINTS_CAMERA_ERRORS and not log.isEnabledFor(logging.DEBUG)
    with native_warnings() if quiet else contextlib.suppress():
        return _open_bounded(spec, open_timeout(spec.kind))


def open_timeout(kind: str) -> float:
    """Seconds an open of a ``kind`` source may take: ``OPEN_TIMEOUT_S``, or ``$EDGE_OPEN_TIMEOUT``."""
    given = os.environ.get(OPEN_TIMEOUT_ENV, "").strip()
    if given:
        try:
            seconds = float(given)
        except ValueError:
            seconds = 0.0
        if seconds > 0:
            return seconds
        log.warning("%s=%s is not a number of seconds above 0; using %.0f s", OPEN_TIMEOUT_ENV, given,
                    OPEN_TIMEOUT_S.get(kind, 20.0))
    return OPEN_TIMEOUT_S.get(kind, 20.0)


def _check_elements(spec: SourceSpec) -> None:
    """Up front, as GStreamer's registry says (OpenCV would wait for good on a missing element)."""
    missing = gstreamer.missing_elements(str(spec.target))
    if missing:
        raise SourceError(f"cannot open {spec.name}: {gstreamer.missing_hint(missing[0])}")


class _Opening:
    """One open on a helper thread; what it opens after its caller gave up on it is released."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._capture = None
        self._error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="edge-open-capture", daemon=True)

    def _run(self) -> None:
        capture, error = None, None
        try:
            capture = _open_now(self.spec)
        except Exception as exc:  # handed to the caller
            error = exc
        with self._lock:
            self._capture, self._error = capture, error
            self.done.set()
            late = self._abandoned
        with _STUCK_OPENS_LOCK:
            _OPENS_IN_FLIGHT.discard(self)
        if late and capture is not None:
            capture.release()

    def result(self, timeout: float):
        """The opened capture; None if it did not open within ``timeout`` (then it is abandoned)."""
        self.done.wait(timeout)
        with self._lock:
            if not self.done.is_set():
                self._abandoned = True
                return None
        if self._error is not None:
            raise self._error
        return self._capture


_STUCK_OPENS: Dict[object, _Opening] = {}  # source target -> an open that has not returned in time
_STUCK_OPENS_LOCK = threading.Lock()
_OPENS_IN_FLIGHT: Set[_Opening] = set()  # opens still inside OpenCV (stuck_readers counts them)


def _open_bounded(spec: SourceSpec, timeout: float) -> "cv2.VideoCapture":
    with _STUCK_OPENS_LOCK:
        stuck = _STUCK_OPENS.get(spec.target)
        if stuck is not None and stuck.done.is_set():
            del _STUCK_OPENS[spec.target]
        elif stuck is not None:
            raise SourceError(_cannot_open(spec, timeout) + " (the last try is still waiting)")
    opening = _Opening(spec)
    with _STUCK_OPENS_LOCK:
        _OPENS_IN_FLIGHT.add(opening)
    opening.thread.start()
    capture = opening.result(timeout)
    if capture is None:
        with _STUCK_OPENS_LOCK:
            _STUCK_OPENS[spec.target] = opening
        raise SourceError(_cannot_open(spec, timeout))
    return capture


def _open_now(spec: SourceSpec) -> "cv2.VideoCapture":
    params = []
    if spec.kind == "stream" and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        # Without these a dead RTSP server can block a read for minutes.
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS]
    capture = cv2.VideoCapture(spec.target, spec.api, params) if params else cv2.VideoCapture(spec.target, spec.api)
    if not capture.isOpened():
        capture.release()
        raise SourceError(_cannot_open(spec))
    if spec.kind == "camera":
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue is lag too
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, spec.width), (cv2.CAP_PROP_FRAME_HEIGHT, spec.height),
                            (cv2.CAP_PROP_FPS, spec.fps)):
            if value:
                capture.set(prop, value)
    return capture


# OpenCV 4.1 (JetPack 4.6) prints V4L2 open errors with fprintf; later ones through their logger, which
# edge.cli sets to errors only where Python can reach it (cv2.utils.logging: not in 4.5.4, JetPack 5.1's).
# fd 2 is the whole process's, so it is redirected only where nothing else keeps that line out.
OPENCV_PRINTS_CAMERA_ERRORS = (tuple(int(n) for n in re.findall(r"\d+", cv2.__version__)[:2]) < (4, 5)
                               or not hasattr(getattr(cv2, "utils", None), "logging"))


def _cannot_open(spec: SourceSpec, timed_out: Optional[float] = None) -> str:
    """The one line for a source that did not open; ``timed_out``: the open did not return in that many seconds."""
    waited = f"no answer in {timed_out:g} s: " if timed_out else ""
    if spec.kind == "camera":
        return (f"cannot open camera {spec.name}: {waited}is it plugged in (v4l2-ctl --list-devices lists cameras) "
                "and is your user in the video group?")
    if spec.kind == "csi":
        return (f"cannot open {spec.name}: {waited}is the CSI camera connected (ribbon cable), nvargus-daemon "
                "running (sudo systemctl restart nvargus-daemon) and your user in the video group?")
    if spec.kind == "file":
        return f"{spec.name}: not a video OpenCV can decode"
    if spec.kind == "gstreamer":
        return (f"cannot open {spec.name}: {waited}does the pipeline's source send anything (a camera not "
                "connected, a stream not up) and may your user read it? (gst-launch-1.0 -v shows where it stops)")
    return f"cannot open {spec.name}: {waited}check the address and that the stream is up"


_STUCK: list = []  # the sources whose reader was still inside a read when they were closed


def stuck_readers() -> int:
    """How many closed sources left a reader thread stuck in a read, and how many opens are still inside
    OpenCV (timed out, or left by SIGTERM): the process must then end at once."""
    with _STUCK_OPENS_LOCK:
        return len(_STUCK) + len(_OPENS_IN_FLIGHT)


class Grabber:
    """Reads a source on its own thread; reconnects a lost live source; replays a file with ``loop``."""

    def __init__(self, spec: SourceSpec, opener: Callable[[SourceSpec], "cv2.VideoCapture"], *,
                 reconnect: Reconnect = Reconnect(), loop: bool = False,
                 on_status: Callable[[str], None] = lambda text: None, read_ahead: int = 0,
                 arrived: Optional[threading.Event] = None) -> None:
        self.spec = spec
        self._open = opener
        self.reconnect = reconnect
        self.loop = loop
        self._on_status = on_status
        self._buffer = FrameBuffer(latest_only=spec.live, read_ahead=read_ahead, arrived=arrived)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-grabber", daemon=True)
        self._capture = None
        self._count = 0
        self._failures = 0  # failed or short-lived connections since frames last flowed for GOOD_WINDOW_S
        self._flowing_since: Optional[float] = None  # the first frame after the last (re)open
        self.heartbeat = time.monotonic()  # the last time a read or a reconnect step finished
        self.error: Optional[str] = None  # why the source ended, if it did not end cleanly
        self.stuck = False  # close() found the reader stuck inside a read
        self.error_code = EXIT_FAILED  # the exit code for ``error``: 2 where the source never was usable
        self.reconnects = 0
        self.source_fps: Optional[float] = None
        self.name = spec.name  # how the source is shown (its password masked)

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    def open_first(self) -> None:
        """Open the source now, so a missing camera is reported at once (retried later if reconnecting forever)."""
        try:
            self._set_capture(self._open(self.spec))
        except SourceError as exc:
            if not (self.spec.live and self.reconnect.forever):
                raise
            log.warning("%s; will keep trying", exc)

    def start(self) -> None:
        self._thread.start()

    @property
    def finished(self) -> bool:
        """The source has ended (end of file, or a live source given up on) and every frame was taken."""
        return self._buffer.closed

    def next(self, timeout: float) -> Optional[Frame]:
        """The frame to classify next, or None if none came within ``timeout`` seconds."""
        return self._buffer.get(timeout)

    def ask(self) -> bool:
        """A video file read on demand (read-ahead 0): start decoding its next frame now, for a later ``next``
        (with several sources, all of a batch decode at once). False for a source that needs no asking."""
        return self._buffer.ask()

    def alive(self, within: float) -> bool:
        """Whether the reader made progress (a frame, a failed read, a reconnect step) in the last ``within`` s."""
        return time.monotonic() - self.heartbeat < within

    def close(self, timeout: float = 1.0) -> None:
        """Stop reading and release the source. A read stuck in the driver cannot be interrupted: then
        ``stuck`` is True, the capture is left to the process's exit, and the caller must end the process
        (``edge.cli`` does, with ``os._exit``, so no thread is ever left behind in a long-running one)."""
        self._stop.set()
        self._buffer.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self.stuck = True
            _STUCK.append(self.spec.name)
            log.warning("%s: the capture thread is stuck in a read; it ends with the process", self.spec.name)
        elif self._capture is not None:
            self._release()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._capture is None and not self._recover():
                    break
                self._read_one()
        except Exception as exc:  # a backend error must end the loop with a line, not kill the thread silently
            self.error = f"{self.spec.name}: capture failed: {exc}"
        finally:
            self._buffer.close()

    def _read_one(self) -> None:
        if not self.spec.live:
            self._buffer.wait_for_room(self._stop)
            if self._stop.is_set():
                return
        started = time.monotonic()
        ok, image = self._capture.read()
        self.heartbeat = done = time.monotonic()
        if ok and image is not None and image.size:
            self._buffer.put(Frame(image, self._count, done, (done - started) * 1e3), self._stop)
            self._count += 1
            self._note_frame(done)
        else:
            self._release()

    def _note_frame(self, now: float) -> None:
        """Renew the reconnect tries once frames have flowed for GOOD_WINDOW_S since the last (re)open."""
        if self._flowing_since is None:
            self._flowing_since = now
        elif self._failures and now - self._flowing_since >= GOOD_WINDOW_S:
            self._failures = 0

    def _recover(self) -> bool:
        """After the source ended or failed: reopen it as the mode says. False when there is nothing more."""
        if not self.spec.live:
            if self._count == 0:  # opened, yet not one frame: an empty video, or one OpenCV cannot decode
                self.error = f"{self.spec.name}: no frame could be read (an empty video, or one OpenCV cannot decode)"
                self.error_code = EXIT_USAGE
                return False
            if not self.loop:
                return False
            log.debug("%s: end of file, replaying (--loop)", self.spec.name)
            return self._try_open(quiet=False)
        if self._count:
            log.warning("%s: lost the source; reconnecting", self.spec.name)
        self._flowing_since = None
        attempt = 0
        while self.reconnect.allows(self._failures):
            delay = self.reconnect.delay(self._failures)
            self._failures += 1
            attempt += 1
            self._on_status(f"reconnecting to {self.spec.name} (try {self._failures})")
            if self._sleep(delay) and self._try_open(quiet=True):
                self.reconnects += 1
                log.warning("%s: reconnected after %d tries", self.spec.name, attempt)
                return True
            if self._stop.is_set():
                return False
        self.error = f"{self.spec.name}: the source is gone and {self.reconnect.tries} reconnect tries failed"
        return False

    def _try_open(self, *, quiet: bool) -> bool:
        try:
            self._set_capture(self._open(self.spec))
            return True
        except SourceError as exc:
            (log.debug if quiet else log.warning)("%s", exc)
            if not quiet:
                self.error = str(exc)
            return False
        finally:
            self.heartbeat = time.monotonic()

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` in small steps, keeping the heartbeat fresh; False if asked to stop."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            self.heartbeat = now = time.monotonic()
            if now >= deadline:
                return True
            self._stop.wait(min(0.2, deadline - now))
        return False

    def _set_capture(self, capture) -> None:
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS) if hasattr(capture, "get") else 0.0
        if fps and 0 < fps < 1000:
            self.source_fps = float(fps)

    def _release(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()


def _require_gstreamer(what: str) -> None:
    if not _has_backend(cv2.CAP_GSTREAMER):
        raise SourceError(f"{what} needs GStreamer, but {GSTREAMER_HINT}")


def _has_backend(api: int) -> bool:
    registry = getattr(cv2, "videoio_registry", None)
    if registry is not None and hasattr(registry, "hasBackend"):
        return bool(registry.hasBackend(api))
    name = {cv2.CAP_GSTREAMER: "GStreamer", cv2.CAP_FFMPEG: "FFMPEG"}.get(api, "")
    return bool(re.search(rf"{name}:\s+YES", cv2.getBuildInformation()))


def _v4l2() -> int:
    return cv2.CAP_V4L2 if os.name == "posix" and Path("/dev").is_dir() and _has_backend(cv2.CAP_V4L2) else cv2.CAP_ANY
