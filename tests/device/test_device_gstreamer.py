"""GStreamer sources through an OpenCV built with GStreamer, as JetPack's is (CI's GStreamer tier: Debian's).

Pipelines that end (a 40-buffer test source, the clip through filesrc and decodebin) end like a video
file; the rendered ``csi://`` pipelines are run by GStreamer itself with stand-ins for NVIDIA's
elements; a missing element, a misspelt one and an open that never returns are one line and exit 2.
Skipped where this OpenCV has no GStreamer (pip's wheels), except under ``$EDGE_REQUIRE_GSTREAMER``,
where that is a failure.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time

import pytest

from .conftest import command, one_line, run

cv2 = pytest.importorskip("cv2")
HAS_GSTREAMER = bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))
REQUIRED = bool(os.environ.get("EDGE_REQUIRE_GSTREAMER"))
MODEL = "fp32_uint8"


@pytest.fixture(autouse=True)
def gstreamer_opencv():
    if HAS_GSTREAMER:
        return
    why = f"this OpenCV ({cv2.__version__}, {cv2.__file__}) has no GStreamer"
    if REQUIRED:
        pytest.fail(why + ", and $EDGE_REQUIRE_GSTREAMER says it must")
    pytest.skip(why)


def stand_in(pipeline: str, buffers: int = 3) -> str:
    """A csi:// pipeline with NVIDIA's elements replaced by stock ones: the same links, caps and sink."""
    text = re.sub(r"nvarguscamerasrc sensor-id=\d+", f"videotestsrc num-buffers={buffers}", pipeline)
    text = re.sub(r"nvvidconv( interpolation-method=\d+)?", "videoconvert ! videoscale", text)
    return text.replace("(memory:NVMM)", "")


def test_a_pipeline_that_ends_gives_every_frame_and_exit_0(bundle):
    done = run("edge-classify", "--quiet", "--json", "--model", bundle.models[MODEL],
               "--source", "videotestsrc num-buffers=40 ! videoconvert ! appsink")
    assert done.code == 0, done.err
    assert [r["frame"] for r in done.json_lines()] == list(range(40))
    assert "reconnect" not in done.err and "gone" not in done.err


def test_a_live_pipeline_and_a_finite_one_in_one_process(bundle, tmp_path):
    """Two GStreamer sources at once: a live test source runs on after a finite one has ended, each named."""
    listed = tmp_path / "sources.txt"
    listed.write_text("live=videotestsrc is-live=true ! video/x-raw,framerate=20/1 ! videoconvert ! appsink\n"
                      "finite=videotestsrc num-buffers=15 ! videoconvert ! appsink\n", encoding="utf-8")
    done = run("edge-classify", "--quiet", "--json", "--model", bundle.models[MODEL], "--sources", listed,
               "--max-frames", 30)
    assert done.code == 0, done.err
    results = done.json_lines()
    assert [r["frame"] for r in results if r["source"] == "finite"] == list(range(15))
    assert len([r for r in results if r["source"] == "live"]) == 30


def test_the_clip_through_filesrc_and_decodebin_gives_the_hosts_labels(bundle):
    pipeline = f"filesrc location={bundle.clip} ! decodebin ! videoconvert ! appsink"
    done = run("edge-classify", "--quiet", "--json", "--model", bundle.models[MODEL], "--source", pipeline)
    assert done.code == 0, done.err
    results = done.json_lines()
    capture = cv2.VideoCapture(str(bundle.clip))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert [r["frame"] for r in results] == list(range(frames))
    expected = bundle.expected[MODEL]["stream"]
    # GStreamer's decoder, not OpenCV's FFmpeg: the same top-1, scores a little apart.
    assert [r["label"] for r in results[:len(expected)]] == [e["label"] for e in expected]
    assert max(abs(r["score"] - e["score"]) for r, e in zip(results, expected)) < 0.05


CSI_CASES = [((None, None, None), None), ((1280, 720, 30), 256), ((1920, 1080, 60), 256)]


@pytest.mark.parametrize("size, resize", CSI_CASES, ids=["plain", "720p-resize", "1080p-resize"])
def test_the_rendered_csi_pipelines_parse_and_run_with_stand_ins(size, resize):
    from edge.sources.capture import csi_pipeline

    text = stand_in(csi_pipeline(0, *size, resize=resize))
    assert "nv" not in text.replace("videoconvert", "")
    gst = gstreamer_binding()
    if gst is not None:  # GStreamer's own parser on the whole text, appsink and its properties included
        gst.parse_launch(text).set_state(gst.State.NULL)
    launch = shutil.which("gst-launch-1.0")
    if launch is None:
        pytest.fail("gst-launch-1.0 is not installed (gstreamer1.0-tools)")
    # Run to its end: caps negotiate. appsink holds its end of stream until its buffers are pulled, so a
    # fakesink takes its place. gst-launch-1.0 quotes an argument with spaces: the words go one by one.
    ran = re.sub(r"appsink[^!]*$", "fakesink sync=false", text)
    done = subprocess.run([launch, "-q", "--gst-debug-level=0"] + shlex.split(ran), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert done.returncode == 0, (ran, done.stdout)


def test_elements_are_looked_up_with_gst_inspect_where_there_is_no_python_binding(monkeypatch):
    from edge.sources import gstreamer
    from edge.sources.capture import csi_pipeline

    monkeypatch.setattr(gstreamer, "_gst", lambda: None)
    gstreamer.has_element.cache_clear()
    try:
        assert gstreamer.missing_elements(csi_pipeline(0, None, None, None)) == ["nvarguscamerasrc", "nvvidconv"]
    finally:
        gstreamer.has_element.cache_clear()


def gstreamer_binding():
    """python3-gi's Gst, initialized, or None."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError):
        return None
    Gst.init(None)
    return Gst


def test_the_resized_csi_pipeline_classifies_through_opencv(bundle):
    from edge.sources.capture import csi_pipeline

    text = stand_in(csi_pipeline(0, 1280, 720, 30, resize=256), buffers=5)
    done = run("edge-classify", "--quiet", "--json", "--model", bundle.models[MODEL], "--source", text)
    assert done.code == 0, done.err
    assert 1 <= len(done.json_lines()) <= 5  # appsink drop=1 max-buffers=1: a slow reader skips some


def test_csi_without_nvidias_element_is_one_line_and_exit_2_at_once(bundle):
    started = time.monotonic()
    done = run("edge-classify", "--quiet", "--model", bundle.models[MODEL], "--source", "csi://0", timeout=60)
    elapsed = time.monotonic() - started
    assert done.code == 2, (done.out, done.err)
    assert one_line(done.err).startswith("edge-classify: cannot open csi://0: GStreamer has no element "
                                         "nvarguscamerasrc")
    assert elapsed < 30, elapsed  # the model's load included; no open timeout waited for


def test_a_misspelt_element_is_named(bundle):
    done = run("edge-classify", "--quiet", "--model", bundle.models[MODEL],
               "--source", "videotestsrcc num-buffers=5 ! videoconvert ! appsink", timeout=60)
    assert done.code == 2
    assert "GStreamer has no element videotestsrcc" in one_line(done.err)


@pytest.fixture()
def pipeline_that_never_opens(tmp_path):
    """filesrc on a FIFO no one writes: the open blocks inside OpenCV for good, as a stuck camera's does."""
    fifo = tmp_path / "never"
    os.mkfifo(str(fifo))
    return f"filesrc location={fifo} ! decodebin ! videoconvert ! appsink"


def test_an_open_that_never_returns_ends_after_the_timeout_with_one_line(bundle, pipeline_that_never_opens):
    started = time.monotonic()
    done = run("edge-classify", "--quiet", "--model", bundle.models[MODEL], "--source", pipeline_that_never_opens,
               env={"EDGE_OPEN_TIMEOUT": "2"}, timeout=60)
    elapsed = time.monotonic() - started
    assert done.code == 2, (done.out, done.err)
    assert "no answer in 2 s: does the pipeline's source send anything" in one_line(done.err)
    assert 2 <= elapsed < 30, elapsed


def test_sigterm_while_the_open_hangs_ends_within_a_second(bundle, pipeline_that_never_opens):
    argv = command("edge-classify") + ["--model", str(bundle.models[MODEL]), "--source", pipeline_that_never_opens]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(lines) < 2 and time.monotonic() < deadline:  # the model's two info lines: the source opens next
            time.sleep(0.05)
        time.sleep(1.5)
        assert process.poll() is None, lines
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
        stopped_after = time.monotonic() - sent
    finally:
        process.kill()
    reader.join(5)
    assert code == 0 and stopped_after < 1.0, (code, stopped_after, lines)
    assert "Traceback" not in "".join(lines)
