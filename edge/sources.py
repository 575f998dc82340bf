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
small bounded queue: ``read_ahead`` frames are decoded ahead of the model (see
:func:`default_read_ahead`; a deeper queue adds its depth in frame age and no speed; 0 decodes a
frame only when the loop asks: the least lag, no overlap). A live source that fails is reopened with
backoff, a bounded number of times or forever (``Reconnect(tries=None)``, as under systemd). The
tries count failures since frames last flowed for ``GOOD_WINDOW_S``: a stream that opens, sends a
few frames and stalls again uses them up instead of being reconnected forever. A read stuck in the
driver (OpenCV 4.1.1 has no read timeout) is left behind by :meth:`Grabber.restart_stuck_reader`.
"""


import contextlib
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, Optional, Tuple, Union

import cv2
import numpy as np

from . import contract
from .backends import runs_on_cpu
from .errors import EdgeError
from .imagecheck import native_warnings

log = logging.getLogger(__name__)

READ_AHEAD = 1  # frames a video file's reader may decode ahead of a model on a GPU (see default_read_ahead)
STREAM_OPEN_TIMEOUT_MS, STREAM_READ_TIMEOUT_MS = 10_000, 5_000
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

    @property
    def live(self) -> bool:
        """Live sources drop stale frames and reconnect; a video file is read in order and ends."""
        return self.kind != "file"


@dataclass(frozen=True)
class Frame:
    """A frame as captured: the BGR image, its number from the source, when it was read and how long that took."""

    image: np.ndarray
    number: int
    captured: float  # time.monotonic() when the read returned
    read_ms: float


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
    """``--camera N`` or ``--source URI`` as a :class:`SourceSpec` (SourceError for a file that is not there).

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
        parsed = contract.parse_source(text)
    except contract.ContractError as exc:
        raise SourceError(str(exc)) from None
    if parsed.kind == "csi":
        _require_gstreamer("csi://")
        return SourceSpec(text, "csi", csi_pipeline(parsed.index, width, height, fps, csi_resize),
                          cv2.CAP_GSTREAMER, **size)
    if parsed.kind == "camera":  # /dev/videoN opens by path, a bare N by index
        if text.isdigit():
            return SourceSpec(f"/dev/video{text}", "camera", int(text), _v4l2(), **size)
        return SourceSpec(text, "camera", text, _v4l2(), **size)
    if parsed.kind == "gstreamer":
        _require_gstreamer("a GStreamer pipeline")
        return SourceSpec(without_password(text), "gstreamer", text, cv2.CAP_GSTREAMER, **size)
    if parsed.kind == "stream":
        api = cv2.CAP_FFMPEG if _has_backend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
        return SourceSpec(without_password(text), "stream", text, api, **size)
    path = Path(text)
    if not path.is_file():
        raise SourceError(f"{text}: no such video file" if not path.exists() else f"{text}: not a video file")
    return SourceSpec(text, "file", str(path), cv2.CAP_ANY, **size)


def default_read_ahead(provider: str) -> int:
    """A video file's read-ahead when ``--read-ahead`` is not given, by what runs the model.

    0 on a CPU: decoding ahead competes with the model for the same cores, so it bought no speed and
    added a frame of age (measured on a shared 2-core host: 91 FPS and 4.5 ms age at 0, 81 FPS and
    17 ms at 1). 1 on a GPU, where decoding the next frame on the CPU overlaps inference.
    """
    return 0 if runs_on_cpu(provider) else READ_AHEAD


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
    """``(width, height)`` after torchvision's ``Resize(resize)``: the shorter side ``resize`` (never enlarged)."""
    if min(width, height) <= resize:
        return width, height
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]*):[^@\s/]*@")


def without_password(text: str) -> str:
    """``rtsp://admin:secret@cam/live`` -> ``rtsp://admin:***@cam/live``: the name a source is shown by.

    The name goes to logs, ``--json`` lines, MQTT payloads and Prometheus labels; the password stays in
    the capture target only.
    """
    return _URL_PASSWORD.sub(r"\1:***@", text)


def open_capture(spec: SourceSpec) -> "cv2.VideoCapture":
    """An opened ``cv2.VideoCapture`` for ``spec``, set to its size and rate (SourceError if it will not open)."""
    params = []
    if spec.kind == "stream" and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        # Without these a dead RTSP server can block a read for minutes.
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS]
    # OpenCV's own "can't open camera by index" would double our one-line error; -v leaves fd 2 alone.
    # Not holding stderr: an open can hang for seconds, and the loop's log lines must not wait for it.
    quiet = spec.kind == "camera" and OPENCV_PRINTS_CAMERA_ERRORS and not log.isEnabledFor(logging.DEBUG)
    with native_warnings(hold_stderr=False) if quiet else contextlib.suppress():
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


def _cannot_open(spec: SourceSpec) -> str:
    if spec.kind == "camera":
        return (f"cannot open camera {spec.name}: is it plugged in (v4l2-ctl --list-devices lists cameras) "
                "and is your user in the video group?")
    if spec.kind == "csi":
        return (f"cannot open {spec.name}: is the CSI camera connected and nvargus-daemon running "
                "(sudo systemctl restart nvargus-daemon)?")
    if spec.kind == "file":
        return f"{spec.name}: not a video OpenCV can decode"
    return f"cannot open {spec.name}: check the address and that the stream is up"


class FrameBuffer:
    """Frames from the grabber thread to the loop: newest-only (live) or a bounded FIFO (a file)."""

    def __init__(self, latest_only: bool, read_ahead: int = READ_AHEAD) -> None:
        if read_ahead < 0:
            raise ValueError(f"--read-ahead must be 0 or more, not {read_ahead}")
        self.latest_only = latest_only
        self._frames: Deque[Frame] = deque()
        self._capacity = 1 if latest_only else read_ahead
        self._cond = threading.Condition()
        self._closed = False
        self._waiting = 0  # consumers blocked in get(): with read-ahead 0, what lets the reader read
        self.dropped = 0

    def wait_for_room(self, stop: threading.Event) -> None:
        """Before reading a file's next frame: wait until fewer than ``read_ahead`` frames are queued
        (with 0, until the loop asks for one), so no frame waits longer than it must."""
        with self._cond:
            while not self._has_room() and not stop.is_set() and not self._closed:
                self._cond.wait(0.1)

    def _has_room(self) -> bool:
        if self._capacity == 0:
            return not self._frames and self._waiting > 0
        return len(self._frames) < self._capacity

    def put(self, frame: Frame, stop: threading.Event) -> None:
        """Add a frame; live: replace an unread one (counted as dropped); file: wait for room."""
        with self._cond:
            if self.latest_only:
                self.dropped += len(self._frames)
                self._frames.clear()
            else:
                while len(self._frames) >= max(self._capacity, 1) and not stop.is_set() and not self._closed:
                    self._cond.wait(0.1)
            self._frames.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float) -> Optional[Frame]:
        """The next frame, or None after ``timeout`` seconds or once closed and empty."""
        with self._cond:
            if not self._frames and not self._closed:
                self._waiting += 1
                self._cond.notify_all()
                try:
                    self._cond.wait(timeout)
                finally:
                    self._waiting -= 1
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class Grabber:
    """Reads a source on its own thread; reconnects a lost live source; replays a file with ``loop``."""

    def __init__(self, spec: SourceSpec, opener: Callable[[SourceSpec], "cv2.VideoCapture"], *,
                 reconnect: Reconnect = Reconnect(), loop: bool = False,
                 on_status: Callable[[str], None] = lambda text: None, read_ahead: int = READ_AHEAD) -> None:
        self.spec = spec
        self._open = opener
        self.reconnect = reconnect
        self.loop = loop
        self._on_status = on_status
        self._buffer = FrameBuffer(latest_only=spec.live, read_ahead=read_ahead)
        self._stop = threading.Event()
        self._generation = 0  # bumped when a stuck reader is left behind; its late frames are dropped
        self._thread = threading.Thread(target=self._run, args=(0,), name="edge-grabber", daemon=True)
        self._capture = None
        self._count = 0
        self._failures = 0  # failed or short-lived connections since frames last flowed for GOOD_WINDOW_S
        self._flowing_since: Optional[float] = None  # the first frame after the last (re)open
        self.abandoned = 0  # reader threads left stuck in a read
        self.heartbeat = time.monotonic()  # the last time a read or a reconnect step finished
        self.error: Optional[str] = None  # why the source ended, if it did not end cleanly
        self.reconnects = 0
        self.source_fps: Optional[float] = None

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    @property
    def finished(self) -> bool:
        """The source has ended (end of file, or a live source given up on) and every frame was taken."""
        return self._buffer.closed

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

    def next(self, timeout: float) -> Optional[Frame]:
        """The frame to classify next, or None if none came within ``timeout`` seconds."""
        return self._buffer.get(timeout)

    def alive(self, within: float) -> bool:
        """Whether the reader made progress (a frame, a failed read, a reconnect step) in the last ``within`` s."""
        return time.monotonic() - self.heartbeat < within

    def close(self, timeout: float = 1.0) -> None:
        """Stop reading and release the source (left to the process's exit if a read is stuck in the driver)."""
        self._stop.set()
        self._buffer.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: the capture thread is stuck in a read; leaving it to exit with the process",
                        self.spec.name)
        elif self._capture is not None:
            self._release()

    def restart_stuck_reader(self) -> None:
        """Leave a reader stuck inside ``read()`` (it cannot be interrupted) and go on with a new one.

        The stuck read counts as a failure of the source, so ``--reconnect N`` still ends a source
        that keeps hanging; the old thread drops whatever it reads if it ever returns.
        """
        if not self._thread.is_alive() or self._stop.is_set():
            return
        self._generation += 1
        self._capture = None  # the stuck thread keeps its own reference and releases it if it returns
        self.abandoned += 1
        self.heartbeat = time.monotonic()
        log.warning("%s: a read has hung; leaving it and reconnecting", self.spec.name)
        self._thread = threading.Thread(target=self._run, args=(self._generation,), name="edge-grabber",
                                        daemon=True)
        self._thread.start()

    def _run(self, generation: int) -> None:
        try:
            while not self._stop.is_set() and generation == self._generation:
                if self._capture is None and not self._recover():
                    break
                self._read_one(generation)
        except Exception as exc:  # a backend error must end the loop with a line, not kill the thread silently
            if generation == self._generation:
                self.error = f"{self.spec.name}: capture failed: {exc}"
        finally:
            if generation == self._generation:
                self._buffer.close()

    def _read_one(self, generation: int) -> None:
        if not self.spec.live:
            self._buffer.wait_for_room(self._stop)
            if self._stop.is_set() or generation != self._generation:
                return
        capture = self._capture
        started = time.monotonic()
        ok, image = capture.read()
        if generation != self._generation:  # this reader was left behind while stuck in that read
            capture.release()
            return
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
            if not self.loop or self._count == 0:
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


def opencv_has_gui() -> bool:
    """Whether this OpenCV can open a window (pip's -headless wheels cannot)."""
    try:
        cv2.namedWindow("edge-classify-probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("edge-classify-probe")
        return True
    except cv2.error:
        return False


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
