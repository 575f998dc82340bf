"""Frames and the one queue that carries them from a source's reader thread to the loop.

    buffer = FrameBuffer(latest_only=False, read_ahead=1)   # a video file or an image list: every frame, in order
    buffer.wait_for_room(stop); buffer.put(frame, stop)      # on the reader thread
    frame = buffer.get(timeout=0.1)                          # on the loop's thread: None after the timeout
    buffer.ask(); frame = buffer.get(timeout=0.1)            # several sources: ask them all, then collect

A live source keeps only the newest frame (``latest_only``): a slow model never works on a stale one,
and the frames it overwrites are counted in ``dropped``. An ordered source (a video file, a list of
images) is a bounded FIFO: ``read_ahead`` frames are read ahead of the loop; with 0 a frame is read
only once the loop asks for one (the least lag and memory, no overlap): by waiting in ``get``, or, with
several sources, by ``ask`` first, so that every source of a batch decodes its frame at once, on its own
thread, and each frame waits only for the batch it is in, never for the batch before it. Cameras, files,
streams and image lists all reach the loop through this one queue (``edge.sources.capture.Grabber``,
``edge.sources.images.ImageSource``). With several sources the loop polls each buffer and, when none has a
frame, waits on the one ``arrived`` event they share.
"""

import threading
from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, Optional

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One frame from a source, stamped when it was read.

    ``image`` is the BGR picture (None where it is not needed any more, or could not be read);
    ``name`` the input's own name where a source has several (an image list); ``error`` why the
    input could not be read (the loop reports it and goes on); ``batch`` the model's input when the
    reader thread already prepared it, with the times that took in ``ms``.
    """

    image: Optional[np.ndarray]
    number: int
    captured: float  # time.monotonic() when the read returned
    read_ms: float
    name: Optional[str] = None
    error: Optional[str] = None
    batch: Optional[np.ndarray] = None
    ms: Optional[Dict[str, float]] = None


class FrameBuffer:
    """Frames from a reader thread to the loop: newest-only (live) or a bounded FIFO (files, image lists)."""

    def __init__(self, latest_only: bool, read_ahead: int = 1, arrived: Optional[threading.Event] = None) -> None:
        if read_ahead < 0:
            raise ValueError(f"--read-ahead must be 0 or more, not {read_ahead}")
        self.latest_only = latest_only
        self._frames: Deque[Frame] = deque()
        self._capacity = 1 if latest_only else read_ahead
        self._cond = threading.Condition()
        self._closed = False
        self._waiting = 0  # consumers blocked in get(): with read-ahead 0, what lets the reader read
        self._asked = False  # with read-ahead 0: the loop asked for the next frame (ask) and has not had it yet
        self._arrived = arrived  # set on every frame and at the end: a loop watching several buffers waits on it
        self.dropped = 0

    def wait_for_room(self, stop: threading.Event) -> None:
        """Before reading an ordered source's next frame: wait until fewer than ``read_ahead`` frames are
        queued (with 0, until the loop asks for one), so no frame waits longer than it must."""
        with self._cond:
            while not self._has_room() and not stop.is_set() and not self._closed:
                self._cond.wait(0.1)

    def _has_room(self) -> bool:
        if self._capacity == 0:
            return not self._frames and (self._waiting > 0 or self._asked)
        return len(self._frames) < self._capacity

    @property
    def on_demand(self) -> bool:
        """An ordered source read only when asked (read-ahead 0): the loop must ``ask`` before it polls."""
        return not self.latest_only and self._capacity == 0

    def ask(self) -> bool:
        """With read-ahead 0: let the reader read the next frame now, without waiting for it here (a later
        ``get`` takes it). Asking again before it is taken reads no more. False (and nothing done) for a
        source that does not read on demand."""
        if not self.on_demand:
            return False
        with self._cond:
            if not self._frames and not self._asked and not self._closed:
                self._asked = True
                self._cond.notify_all()
        return True

    def put(self, frame: Frame, stop: threading.Event) -> None:
        """Add a frame; live: replace an unread one (counted as dropped); ordered: wait for room."""
        with self._cond:
            if self.latest_only:
                self.dropped += len(self._frames)
                self._frames.clear()
            else:
                while len(self._frames) >= max(self._capacity, 1) and not stop.is_set() and not self._closed:
                    self._cond.wait(0.1)
            self._frames.append(frame)
            self._asked = False  # the frame asked for is here
            self._cond.notify_all()
        if self._arrived is not None:
            self._arrived.set()

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
        if self._arrived is not None:
            self._arrived.set()

    @property
    def closed(self) -> bool:
        """No more frames will come (the reader ended or the run is closing)."""
        return self._closed
