"""edge-classify --source against streams that stall, hang and never open, and outputs that would lose work.

Live sources are fakes behind ``edge.sources.open_capture`` (no network in tests): a stream that sends
a few frames and then stalls, one whose read never returns (OpenCV 4.1.1 has no read timeout), one
whose open blocks. Each must end as ``--reconnect`` says, or within a second of SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_photo_video

import edge.loop
import edge.sources
from edge.cli import main
from edge.output import VideoSink

RTSP = "rtsp://camera.local/stream"


@pytest.fixture(scope="module")
def model(photo_onnx) -> Path:
    return photo_onnx


class StallingStream:
    """Sends ``frames`` frames, then stalls: each read returns False after ``timeout`` s (OpenCV with a read
    timeout) or, with ``timeout`` None, blocks until ``released`` is set (OpenCV without one)."""

    def __init__(self, image: np.ndarray, frames: int, timeout, released: threading.Event) -> None:
        self.image, self.left, self.timeout, self.released = image, frames, timeout, released

    def read(self):
        time.sleep(0.005)
        if self.left > 0:
            self.left -= 1
            return True, self.image.copy()
        if self.timeout is None:
            self.released.wait(60)
        else:
            time.sleep(self.timeout)
        return False, None

    def get(self, prop):
        return 0.0

    def release(self):
        pass


@pytest.fixture()
def stream_that_stalls(photos, monkeypatch):
    """``make(timeout)``: every open succeeds, sends 3 frames and stalls; ``opens`` counts the opens."""
    image = np.ascontiguousarray(photos["chelsea"][..., ::-1])
    released = threading.Event()
    opens = []

    def make(timeout):
        def open_capture(spec):
            opens.append(time.monotonic())
            return StallingStream(image, 3, timeout, released)

        monkeypatch.setattr(edge.sources, "open_capture", open_capture)
        return opens

    monkeypatch.setattr(edge.sources, "BACKOFF_START_S", 0.01)
    monkeypatch.setattr(edge.loop, "STALL_S", 0.4)
    yield make
    released.set()  # let the readers left behind finish


@pytest.mark.parametrize("timeout", [0.05, None], ids=["read times out", "read hangs"])
def test_a_stream_that_sends_frames_then_stalls_uses_up_its_reconnects(timeout, model, stream_that_stalls, capsys):
    opens = stream_that_stalls(timeout)
    started = time.monotonic()
    code = main(["--model", str(model), "--source", RTSP, "--reconnect", "3", "--json"])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert captured.err.strip().splitlines()[-1] == f"edge-classify: {RTSP}: the source is gone and 3 reconnect " \
                                                    "tries failed"
    assert "Traceback" not in captured.err
    assert len(opens) == 4  # the first open and 3 reconnects, then it gives up
    assert len(captured.out.splitlines()) >= 3 and elapsed < 20


def test_a_steady_stream_renews_its_reconnect_tries(photos, monkeypatch):
    """Failures count since frames last flowed for GOOD_WINDOW_S: 5 drops a long while apart never end it."""
    image = np.ascontiguousarray(photos["chelsea"][..., ::-1])
    released = threading.Event()
    monkeypatch.setattr(edge.sources, "BACKOFF_START_S", 0.01)
    monkeypatch.setattr(edge.sources, "GOOD_WINDOW_S", 0.05)
    spec = edge.sources.parse_source(source=RTSP)
    grabber = edge.sources.Grabber(spec, lambda _spec: StallingStream(image, 30, 0.0, released),
                                   reconnect=edge.sources.Reconnect(2))
    grabber.open_first()
    grabber.start()
    frames = 0
    while frames < 150:
        frame = grabber.next(timeout=2)
        assert frame is not None, grabber.error
        frames += 1
    grabber.close()
    assert grabber.reconnects >= 4 and grabber.error is None


def test_sigterm_while_the_first_open_blocks_ends_within_a_second(model, monkeypatch, capsys):
    opening = threading.Event()

    def open_capture(spec):  # an RTSP server that accepts the connection and never answers
        opening.set()
        time.sleep(30)
        raise edge.sources.SourceError("never")

    monkeypatch.setattr(edge.sources, "open_capture", open_capture)
    sent = []

    def terminate():
        if opening.wait(30):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler is in place while the source opens

    threading.Thread(target=terminate, daemon=True).start()
    code = main(["--model", str(model), "--source", RTSP])
    stopped_after = time.monotonic() - sent[0]
    assert code == 0 and stopped_after < 1.0, stopped_after
    assert "Traceback" not in capsys.readouterr().err


def test_output_equal_to_the_source_video_is_a_usage_error(model, photos, tmp_path, capsys):
    video = write_photo_video(tmp_path / "a.avi", photos, ["chelsea"], 3)
    before = video.read_bytes()
    for output in (video, tmp_path / "." / "a.avi"):
        code = main(["--model", str(model), "--source", str(video), "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 2 and "is one of the inputs" in err and err.count("\n") == 1, err
    assert video.read_bytes() == before


def test_a_killed_run_leaves_no_hidden_video_behind(tmp_path):
    out = tmp_path / "out.avi"
    dead = tmp_path / ".out.tmp-999999999-abc.avi"  # what SIGKILL left: no process has that id
    alive = tmp_path / f".out.tmp-{os.getpid()}-xyz.avi"  # another run writing right now
    other = tmp_path / ".other.tmp-999999999-abc.avi"
    for path in (dead, alive, other):
        path.write_bytes(b"half a video")
    with VideoSink(out, fps=10) as sink:
        sink.write(np.zeros((48, 64, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, alive.name, other.name])


def test_labels_in_the_stream_output_are_escaped(model, photos, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    names = ["astronaut", "chelsea\x1b[2J", "coffee", "rocket", "camera", "hubble_deep_field", "frame640"]
    labels.write_text("\n".join(names) + "\n")
    video = write_photo_video(tmp_path / "v.avi", photos, ["chelsea"], 2)
    code = main(["--model", str(model), "--source", str(video), "--labels", str(labels)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "\x1b" not in captured.out and "chelsea\\x1b[2J" in captured.out
    code = main(["--model", str(model), "--source", str(video), "--labels", str(labels), "--json"])
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] == "chelsea\x1b[2J"
