"""A video file's read-ahead: the reader decodes at most N frames before the loop takes them (0: on demand)."""

import time

import numpy as np
import pytest

from edge.cli import main
from edge.sources.capture import Grabber, SourceSpec
from edge.sources.frames import Frame, FrameBuffer


class CountingVideo:
    """A video file of ``frames`` tiny frames that counts how many were decoded."""

    def __init__(self, frames: int) -> None:
        self.left, self.reads = frames, 0

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        self.reads += 1
        return True, np.full((4, 4, 3), self.reads, np.uint8)

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def reads_after(video: CountingVideo, expected: int, settle_s: float = 0.3, timeout_s: float = 10.0) -> int:
    """The reader's count once it has had time to reach ``expected`` (however slow a loaded machine is),
    and ``settle_s`` more to overshoot it if it were going to."""
    deadline = time.monotonic() + timeout_s
    while video.reads < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(settle_s)
    return video.reads


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_reader_stays_at_most_read_ahead_frames_ahead(depth):
    video = CountingVideo(20)
    spec = SourceSpec("clip.avi", "file", "clip.avi", 0)
    grabber = Grabber(spec, lambda _spec: video, read_ahead=depth)
    grabber.open_first()
    grabber.start()
    try:
        assert reads_after(video, depth) == depth  # nobody took a frame yet
        frames = [grabber.next(timeout=1.0) for _ in range(5)]
        assert [f.number for f in frames] == [0, 1, 2, 3, 4]  # every frame, in order
        assert reads_after(video, 5 + depth) == 5 + depth
    finally:
        grabber.close()


def test_asking_reads_one_frame_on_demand_without_waiting_for_it():
    """Several sources: the loop asks each file for its next frame (all decode at once), then collects them."""
    video = CountingVideo(20)
    spec = SourceSpec("clip.avi", "file", "clip.avi", 0)
    grabber = Grabber(spec, lambda _spec: video, read_ahead=0)
    grabber.open_first()
    grabber.start()
    try:
        assert grabber.next(timeout=0) is None and reads_after(video, 0) == 0  # a poll alone reads nothing
        for _ in range(3):
            assert grabber.ask()
        assert reads_after(video, 1) == 1  # asked three times before taking it: still one frame
        assert grabber.next(timeout=0).number == 0
        assert reads_after(video, 1) == 1  # taken: nothing more until asked again
        assert grabber.ask() and grabber.next(timeout=1.0).number == 1 and reads_after(video, 2) == 2
    finally:
        grabber.close()
    ahead = Grabber(spec, lambda _spec: CountingVideo(5), read_ahead=1)
    assert not ahead.ask()  # read ahead anyway: nothing to ask
    live = Grabber(SourceSpec("cam", "camera", 0, 0), lambda _spec: CountingVideo(5), read_ahead=0)
    assert not live.ask()  # newest frame only


def test_live_sources_keep_only_the_newest_frame_whatever_the_depth():
    import threading

    buffer = FrameBuffer(latest_only=True, read_ahead=4)
    stop = threading.Event()
    for number in range(5):
        buffer.put(Frame(None, number, 0.0, 0.0), stop)  # never blocks: the stale frames are replaced
    assert buffer.get(timeout=0.1).number == 4 and buffer.dropped == 4 and buffer.get(timeout=0.01) is None
    with pytest.raises(ValueError, match="0 or more"):
        FrameBuffer(latest_only=False, read_ahead=-1)


def test_read_ahead_is_refused_for_a_live_source(photo_onnx, capsys):
    code = main(["--model", str(photo_onnx), "--camera", "0", "--read-ahead", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--read-ahead" in err
