"""GStreamer pipeline sources without GStreamer: which pipelines end like a file, and the bounded open.

The real pipelines run in CI's GStreamer tier (tests/device/test_device_gstreamer.py, Debian's OpenCV);
here the rule is held to its documented cases, and an open that never returns is a fake behind
``edge.sources.capture``.
"""

import os
import threading
import time

import cv2
import pytest

import edge.sources.capture as capture
from edge.sources import gstreamer
from edge.sources.capture import SourceError, SourceSpec, csi_pipeline


@pytest.mark.parametrize("text, finite", [
    ("videotestsrc num-buffers=40 ! videoconvert ! appsink", True),
    ("videotestsrc is-live=true num-buffers=40 ! videoconvert ! appsink", True),  # asked to end: it ends
    ("filesrc location=clip.mp4 ! decodebin ! videoconvert ! appsink", True),
    ('filesrc location="/videos/my clip.mp4" ! decodebin ! videoconvert ! appsink', True),
    ("multifilesrc location=img%05d.jpg ! jpegdec ! videoconvert ! appsink", True),
    ("uridecodebin uri=file:///videos/clip.mp4 ! videoconvert ! appsink", True),
    ("multifilesrc location=img%05d.jpg loop=true ! jpegdec ! videoconvert ! appsink", False),
    ("videotestsrc is-live=true ! videoconvert ! appsink", False),
    ("videotestsrc ! videoconvert ! appsink", False),  # never ends by itself
    ("v4l2src device=/dev/video1 ! videoconvert ! appsink drop=1", False),
    ("rtspsrc location=rtsp://cam/live latency=0 ! rtph264depay ! avdec_h264 ! videoconvert ! appsink", False),
    ("uridecodebin uri=rtsp://cam/live ! videoconvert ! appsink", False),
    (csi_pipeline(0, None, None, None), False),
    ("videoconvert ! appsink num-buffers=3", False),  # only the first element's properties count
])
def test_finite_or_live_from_the_first_element(text, finite):
    assert gstreamer.is_finite(text) is finite


def test_elements_skip_caps_references_and_quotes():
    text = ('tee name=t ! queue ! video/x-raw(memory:NVMM), width=1280, format=NV12 ! appsink t. ! queue ! '
            'filesink location="a ! b.mp4"')
    assert gstreamer.elements(text) == ["tee", "queue", "appsink", "queue", "filesink"]
    assert gstreamer.elements(csi_pipeline(0, 1920, 1080, 30, resize=256)) == [
        "nvarguscamerasrc", "nvvidconv", "videoconvert", "appsink"]


def test_a_finite_pipeline_is_read_as_a_file_is():
    spec = SourceSpec("p", "gstreamer", "filesrc location=a.mp4 ! decodebin ! appsink", 0, finite=True)
    assert not spec.live
    assert SourceSpec("p", "gstreamer", "videotestsrc ! appsink", 0).live


def test_missing_elements_are_named(monkeypatch):
    monkeypatch.setattr(gstreamer, "has_element", lambda name: name != "nvarguscamerasrc")
    assert gstreamer.missing_elements(csi_pipeline(0, None, None, None)) == ["nvarguscamerasrc"]
    assert "nvidia-l4t-gstreamer" in gstreamer.missing_hint("nvarguscamerasrc")
    monkeypatch.setattr(gstreamer, "has_element", lambda name: None)  # no gi, no gst-inspect-1.0
    assert gstreamer.missing_elements("videotestsrc ! appsink") is None


@pytest.fixture()
def open_that_hangs(monkeypatch):
    """``_open_now`` blocks until ``release`` is set; ``opens`` counts the calls into OpenCV."""
    release, opens = threading.Event(), []

    class Capture:
        released = False

        def release(self):
            self.released = True

    def hang(spec):
        opens.append(Capture())
        release.wait(30)
        return opens[-1]

    monkeypatch.setattr(capture, "_open_now", hang)
    monkeypatch.setattr(capture, "_STUCK_OPENS", {})
    monkeypatch.setenv(capture.OPEN_TIMEOUT_ENV, "0.3")
    yield release, opens
    release.set()


def test_an_open_that_never_returns_is_bounded_and_never_retried_in_parallel(open_that_hangs, monkeypatch):
    release, opens = open_that_hangs
    spec = SourceSpec("csi://0", "csi", csi_pipeline(0, None, None, None), cv2.CAP_GSTREAMER)
    before = capture.stuck_readers()
    started = time.monotonic()
    with pytest.raises(SourceError) as first:
        capture.open_capture(spec)
    assert capture.stuck_readers() == before + 1  # edge-classify then ends with os._exit, not at interpreter exit
    assert 0.25 < time.monotonic() - started < 5
    assert str(first.value).startswith("cannot open csi://0: no answer in 0.3 s: is the CSI camera connected")
    assert "sudo systemctl restart nvargus-daemon" in str(first.value)
    monkeypatch.setenv(capture.OPEN_TIMEOUT_ENV, "60")  # had it waited for an open, this would take a minute
    started = time.monotonic()
    with pytest.raises(SourceError, match="still waiting"):
        capture.open_capture(spec)  # the first is still stuck: no second thread, no wait
    assert time.monotonic() - started < 30 and len(opens) == 1
    release.set()  # it returns at last: what it opened is released, and the next try opens anew
    deadline = time.monotonic() + 5
    while not opens[0].released and time.monotonic() < deadline:
        time.sleep(0.01)
    assert opens[0].released and capture.stuck_readers() == before
    assert capture.open_capture(spec) is opens[1]


def test_the_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(capture.OPEN_TIMEOUT_ENV, raising=False)
    assert capture.open_timeout("csi") == capture.OPEN_TIMEOUT_S["csi"]
    monkeypatch.setenv(capture.OPEN_TIMEOUT_ENV, "2.5")
    assert capture.open_timeout("camera") == 2.5
    monkeypatch.setenv(capture.OPEN_TIMEOUT_ENV, "soon")
    assert capture.open_timeout("csi") == capture.OPEN_TIMEOUT_S["csi"]


def test_a_camera_open_left_stuck_gives_stderr_back(open_that_hangs, monkeypatch, capfd):
    """Old OpenCVs print V4L2 errors on fd 2, which is redirected while a camera opens; never for good."""
    monkeypatch.setattr(capture, "OPENCV_PRINTS_CAMERA_ERRORS", True)
    spec = SourceSpec("/dev/video63", "camera", 63, cv2.CAP_ANY)
    with pytest.raises(SourceError, match="cannot open camera /dev/video63: no answer in 0.3 s"):
        capture.open_capture(spec)
    capfd.readouterr()
    os.write(2, b"edge-classify: the line after\n")
    assert capfd.readouterr().err == "edge-classify: the line after\n"
