"""edge-classify --source against streams that stall, hang and never open, and outputs that would lose work.

Live sources are fakes behind ``edge.sources.capture.open_capture`` (no network in tests): a stream that sends
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

import edge.pipeline
import edge.sources.capture
from edge.cli import main
from edge.sinks.files import VideoSink

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

        monkeypatch.setattr(edge.sources.capture, "open_capture", open_capture)
        return opens

    monkeypatch.setattr(edge.sources.capture, "BACKOFF_START_S", 0.01)
    monkeypatch.setattr(edge.pipeline, "STALL_S", 0.4)
    yield make
    released.set()  # let the readers left behind finish


def test_a_stream_whose_read_hangs_ends_the_run_without_reconnecting(model, stream_that_stalls, capsys):
    """A read that never returns cannot be interrupted: the run ends (exit 1, one line) for systemd to start it
    afresh, instead of leaving a thread and a capture behind for every hang (one open, no reconnect)."""
    opens = stream_that_stalls(None)
    code = main(["--model", str(model), "--source", RTSP, "--reconnect", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"edge-classify: {RTSP}: no frame and no error") and "has hung" in last
    assert "Traceback" not in captured.err and len(opens) == 1
    assert captured.out.splitlines()  # the frames before the hang were classified (some may be dropped: live)


def test_a_stream_that_sends_frames_then_stalls_uses_up_its_reconnects(model, stream_that_stalls, capsys):
    opens = stream_that_stalls(0.05)
    code = main(["--model", str(model), "--source", RTSP, "--reconnect", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert captured.err.strip().splitlines()[-1] == f"edge-classify: {RTSP}: the source is gone and 3 reconnect " \
                                                    "tries failed"
    assert "Traceback" not in captured.err
    assert len(opens) == 4  # the first open and 3 reconnects, then it gives up
    assert len(captured.out.splitlines()) >= 3


def test_a_steady_stream_renews_its_reconnect_tries(photos, monkeypatch):
    """Failures count since frames last flowed for GOOD_WINDOW_S: 5 drops a long while apart never end it."""
    image = np.ascontiguousarray(photos["chelsea"][..., ::-1])
    released = threading.Event()
    monkeypatch.setattr(edge.sources.capture, "BACKOFF_START_S", 0.01)
    monkeypatch.setattr(edge.sources.capture, "GOOD_WINDOW_S", 0.05)
    spec = edge.sources.capture.parse_source(source=RTSP)
    grabber = edge.sources.capture.Grabber(spec, lambda _spec: StallingStream(image, 30, 0.0, released),
                                   reconnect=edge.sources.capture.Reconnect(2))
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
        raise edge.sources.capture.SourceError("never")

    monkeypatch.setattr(edge.sources.capture, "open_capture", open_capture)
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


# ------------------------------------------------------------------ issue 20, round three: streams and videos

@pytest.mark.parametrize("given, shown", [
    ("rtsp://admin:secret@cam/live", "rtsp://admin:***@cam/live"),
    ("rtsp://admin:p@ssw0rd@cam/live", "rtsp://admin:***@cam/live"),  # an @ in the password
    ("rtsp://admin:pa/ss@cam:554/live", "rtsp://admin:***@cam:554/live"),  # a / in the password
    ("rtsp://token@cam/x", "rtsp://***@cam/x"),
    ("rtspsrc location=rtsp://cam/live user-id=admin user-pw=secret ! decodebin ! appsink",
     "rtspsrc location=rtsp://cam/live user-id=*** user-pw=*** ! decodebin ! appsink"),
    ('rtspsrc user-pw="a b" location=rtsp://u:p@h/x ! appsink', "rtspsrc user-pw=*** location=rtsp://u:***@h/x ! appsink"),
])
def test_credentials_are_masked_in_every_form_they_take(given, shown):
    from edge.sources.capture import without_password

    assert without_password(given) == shown


def test_a_video_without_frames_or_not_a_video_is_one_line_and_exit_2(model, tmp_path, capfd):
    import cv2

    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()  # a header and not one frame
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    for path in (empty, text):
        if not path.exists():
            continue
        code = main(["--model", str(model), "--source", str(path)])
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("edge-classify: ") and path.name in lines[0], err


def test_a_video_output_the_disk_could_not_hold_is_not_saved_and_exits_2(model, photos, tmp_path, capsys):
    """OpenCV's writer says nothing on a full disk: the video is read back, and a short one is not moved into place."""
    import shutil
    import subprocess

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(tiny)],
                      stderr=subprocess.DEVNULL).returncode != 0:
        pytest.skip("this machine does not let us mount a tmpfs")
    try:
        clip = write_photo_video(tmp_path / "clip.avi", photos, ["chelsea", "coffee"], 15)
        code = main(["--model", str(model), "--source", str(clip), "--output", str(tiny / "out.avi")])
        err = capsys.readouterr().err
        assert code == 2 and "frames could be written" in err.strip().splitlines()[-1], err
        assert os.listdir(str(tiny)) == []  # no short video in place, and no temporary left
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)
