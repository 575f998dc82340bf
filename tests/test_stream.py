"""edge-classify on videos and (fake) live sources: order, labels, overlay video, loop, smoothing, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_checks import usage_error
from conftest import write_photo_video
from reference import decoded_frames

import edge.sources.capture
from edge.cli import main

REPO = Path(__file__).resolve().parents[1]
FRAMES_PER_PHOTO = 4
SHOWN = ("astronaut", "chelsea", "coffee", "rocket", "camera")


@pytest.fixture(scope="module")
def model(photo_onnx) -> Path:
    return photo_onnx


@pytest.fixture(scope="module")
def video(tmp_path_factory, photos) -> Path:
    """FRAMES_PER_PHOTO frames of each photo in SHOWN, in order."""
    return write_photo_video(tmp_path_factory.mktemp("video") / "photos.avi", photos, SHOWN, FRAMES_PER_PHOTO)


def run_json(capsys, *argv):
    code = main([*map(str, argv), "--json"])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_every_frame_of_a_file_in_order_with_the_labels_of_image_mode(model, video, tmp_path, capsys):
    frames = decoded_frames(video)
    still = tmp_path / "frames"
    still.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(still / f"{i:03d}.png"), frame)  # lossless: the very pixels the loop sees
    code, records, err = run_json(capsys, "--model", model, "--source", video)
    assert code == 0, err
    assert [r["frame"] for r in records] == list(range(len(frames))) == list(range(FRAMES_PER_PHOTO * len(SHOWN)))
    assert [r["label"] for r in records] == [name for name in SHOWN for _ in range(FRAMES_PER_PHOTO)]
    _, images, _ = run_json(capsys, "--model", model, "--image", still)
    assert [r["label"] for r in records] == [r["label"] for r in images]
    assert [r["index"] for r in records] == [r["index"] for r in images]
    assert np.allclose([r["score"] for r in records], [r["score"] for r in images], atol=1e-6)
    first = records[0]
    assert first["source"] == str(video) and first["dropped"] == 0 and first["age_ms"] >= 0
    assert abs(first["time"] - time.time()) < 120
    assert {"decode", "preprocess", "infer", "topk"} <= set(first["ms"])


def test_overlay_video_has_every_frame_and_the_label(model, video, tmp_path, capsys):
    out = tmp_path / "labelled.mp4"
    code = main(["--model", str(model), "--source", str(video), "--output", str(out)])
    human = capsys.readouterr().out.splitlines()
    assert code == 0
    written = decoded_frames(out)
    assert len(written) == FRAMES_PER_PHOTO * len(SHOWN)
    original = decoded_frames(video)
    band = np.abs(written[0][:20].astype(int) - original[0][:20].astype(int)).mean()
    assert band > 20  # the darkened band with the label text
    assert [p.name for p in tmp_path.iterdir()] == ["labelled.mp4"]  # no temporary file left
    # Human output: one line per change of label.
    assert [line.split(": ")[1].split(" (")[0] for line in human] == list(SHOWN)
    assert "[frame 0]" in human[0] and f"[frame {FRAMES_PER_PHOTO}, " in human[1]


def test_loop_replays_a_file_until_max_frames(model, video, capsys):
    total = FRAMES_PER_PHOTO * len(SHOWN)
    code, records, _ = run_json(capsys, "--model", model, "--source", video, "--loop", "--max-frames", total + 7)
    assert code == 0
    assert [r["frame"] for r in records] == list(range(total + 7))
    assert [r["label"] for r in records[total:]] == [r["label"] for r in records[:7]]


def test_smoothing_and_threshold(model, video, photo_model, capsys):
    classes = len(photo_model[1])
    _, plain, _ = run_json(capsys, "--model", model, "--source", video, "--topk", 100)
    probs = np.zeros((len(plain), classes))
    for row, record in zip(probs, plain):
        for k in record["topk"]:
            row[k["index"]] = k["score"]
    _, smoothed, _ = run_json(capsys, "--model", model, "--source", video, "--smooth", 3)
    expected = [int(np.argmax(probs[max(0, i - 2):i + 1].mean(0))) for i in range(len(plain))]
    assert [r["index"] for r in smoothed] == expected
    assert [r["index"] for r in smoothed] != [r["index"] for r in plain]  # smoothing delays the changes
    distinct = sorted({r["score"] for r in plain})
    assert len(distinct) > 1
    threshold = (distinct[len(distinct) // 2 - 1] + distinct[len(distinct) // 2]) / 2  # never on a (rounded) score
    _, gated, _ = run_json(capsys, "--model", model, "--source", video, "--threshold", threshold)
    for record, original in zip(gated, plain):
        if original["score"] < threshold:
            assert record["label"] == "unknown" and record["index"] is None
        else:
            assert record["label"] == original["label"] and record["index"] == original["index"]
    assert any(r["label"] == "unknown" for r in gated) and any(r["label"] != "unknown" for r in gated)


class FakeCamera:
    """A live camera that yields ``frames`` frames (about 200 fps) and then fails, like one unplugged."""

    def __init__(self, image: np.ndarray, frames: int) -> None:
        self.image, self.left, self.released = image, frames, False

    def read(self):
        time.sleep(0.005)
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, self.image.copy()

    def get(self, prop):
        return 0.0

    def release(self):
        self.released = True


def fake_opener(photos, plan):
    """An opener that follows ``plan``: a frame count for a camera that opens, or None for a failed open."""
    opened = []
    image = np.ascontiguousarray(photos["chelsea"][..., ::-1])

    def open_capture(spec):
        step = plan.pop(0) if plan else None
        if step is None:
            raise edge.sources.capture.SourceError(f"cannot open {spec.name}: check the address and that the stream is up")
        opened.append(FakeCamera(image, step))
        return opened[-1]

    return open_capture, opened


def test_a_live_source_that_fails_mid_run_is_reconnected(model, photos, monkeypatch, capsys, caplog):
    opener, opened = fake_opener(photos, [6, None, None, 1000])
    monkeypatch.setattr(edge.sources.capture, "open_capture", opener)
    monkeypatch.setattr(edge.sources.capture, "BACKOFF_START_S", 0.01)
    caplog.set_level("INFO")
    code, records, err = run_json(capsys, "--model", model, "--source", "rtsp://camera.local/stream",
                                  "--max-frames", 20)
    assert code == 0, err
    assert len(records) == 20 and [r["frame"] for r in records] == list(range(20))
    assert {r["label"] for r in records} == {"chelsea"} and records[0]["source"] == "rtsp://camera.local/stream"
    assert len(opened) == 2 and all(c.released for c in opened)
    assert "lost the source" in caplog.text and "reconnected after 3 tries" in caplog.text


def test_a_source_that_never_comes_back_ends_with_one_line(model, photos, monkeypatch, capsys):
    opener, _ = fake_opener(photos, [4])
    monkeypatch.setattr(edge.sources.capture, "open_capture", opener)
    monkeypatch.setattr(edge.sources.capture, "BACKOFF_START_S", 0.01)
    code, records, err = run_json(capsys, "--model", model, "--source", "rtsp://camera.local/stream",
                                  "--reconnect", 2)
    assert code == 1
    assert 1 <= len(records) <= 4  # what it saw before the camera went is not lost
    assert err.strip().splitlines()[-1] == ("edge-classify: rtsp://camera.local/stream: the source is gone and 2 "
                                            "reconnect tries failed")
    assert "Traceback" not in err


def test_an_unwritable_video_suffix_exits_2(model, video, tmp_path, capsys):
    code = main(["--model", str(model), "--source", str(video), "--output", str(tmp_path / "out.gif")])
    usage_error(code, capsys.readouterr().err, "edge-classify", "unknown video suffix '.gif'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a subprocess soak run; test_hostile_stream.py checks SIGTERM's second in process
def test_sigterm_stops_a_run_at_once_and_leaves_a_playable_video(model, video, tmp_path):
    out = tmp_path / "soak.avi"
    command = [sys.executable, "-m", "edge.cli", "--model", str(model), "--source", str(video), "--loop", "--json",
               "--output", str(out)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        while len(lines) < 30:  # more than one pass through the file: it is looping
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=10)
        stopped_after = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert stopped_after < 1.0, stopped_after
    assert "Traceback" not in err
    records = [json.loads(line) for line in lines + rest.splitlines()]
    assert len(decoded_frames(out)) == len(records)  # finalized: every classified frame is in the file
    assert [p.name for p in tmp_path.iterdir()] == ["soak.avi"]


def test_a_stuck_camera_ends_the_run_with_one_line(model, monkeypatch, capsys):
    """A read that never returns: after STALL_S the run ends, exit 1, one line (systemd restarts the service
    with a fresh capture), instead of leaving a thread and a capture behind per hang and going on."""
    import threading

    import edge.pipeline

    released = threading.Event()

    class StuckCamera:
        def read(self):
            released.wait(30)
            return False, None

        def get(self, prop):
            return 0.0

        def release(self):
            pass

    monkeypatch.setattr(edge.pipeline, "STALL_S", 0.3)
    monkeypatch.setattr(edge.sources.capture, "open_capture", lambda spec: StuckCamera())
    started = time.monotonic()
    try:
        code = main(["--model", str(model), "--source", "rtsp://camera.local/stream"])
    finally:
        released.set()
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - started < 10
    lines = [line for line in err.splitlines() if "has hung" in line]
    assert len(lines) == 1 and "rtsp://camera.local/stream" in lines[0], err
    assert edge.sources.capture.stuck_readers() >= 1  # edge-classify then ends the process at once