"""Several sources in one process: ``--source`` and ``--camera`` repeated, ``--sources FILE``, one batched model.

Each source keeps what one source has alone (its frames in order, its smoothing, its times, its own video
output), a source that fails never stops the others, and the exit code and the last lines say which failed.
"""

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from conftest import write_photo_video

from edge.cli import main
from edge.model.classify import Classifier
from edge.sources.sourcelist import (SourceEntry, SourceListError, named, parse_roi, read_sources_file,
                                     short_name, source_entries, unique)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory, photos) -> Dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    return {"door": write_photo_video(folder / "door.avi", photos, ("chelsea", "coffee"), 3),
            "yard": write_photo_video(folder / "yard.avi", photos, ("rocket", "astronaut", "camera"), 2)}


def records(capsys) -> List[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def by_source(found: List[dict]) -> Dict[str, List[dict]]:
    grouped: Dict[str, List[dict]] = {}
    for record in found:
        grouped.setdefault(record["source"], []).append(record)
    return grouped


# -- the sources file and the flags


def test_sources_file_names_rois_comments_and_pipelines(tmp_path):
    listed = tmp_path / "cameras.txt"
    listed.write_text("\ufeff# the shop\n\ndoor=rtsp://user:pw@10.0.0.5/s1\n  yard=csi://0  roi=0,200,1280,520\n"
                      "/videos/test.mp4\nvideotestsrc num-buffers=40 ! videoconvert ! appsink\n", encoding="utf-8")
    assert read_sources_file(listed) == [
        SourceEntry("rtsp://user:pw@10.0.0.5/s1", "door"), SourceEntry("csi://0", "yard", (0, 200, 1280, 520)),
        SourceEntry("/videos/test.mp4"), SourceEntry("videotestsrc num-buffers=40 ! videoconvert ! appsink")]
    assert unique([short_name(e.uri) for e in read_sources_file(listed)]) == ["10.0.0.5-s1", "csi0", "test",
                                                                             "pipeline"]
    assert unique(["a", "a", "b", "a"]) == ["a", "a-2", "b", "a-3"]


@pytest.mark.parametrize("text, reason", [
    ("", "no source in it"), ("# only a comment\n", "no source in it"), ("door=csi://0 roi=1,2,3\n", ":1: roi"),
    ("a\n\nb roi=0,0,0,5\n", ":3: roi"), ("cam\x07=csi://0\n", "control character"),
])
def test_sources_file_refusals_name_the_line(tmp_path, text, reason):
    listed = tmp_path / "s.txt"
    listed.write_text(text, encoding="utf-8")
    with pytest.raises(SourceListError, match=reason):
        read_sources_file(listed)


def test_sources_file_that_is_not_a_file_or_too_big(tmp_path):
    with pytest.raises(SourceListError, match="no such file"):
        read_sources_file(tmp_path / "missing.txt")
    with pytest.raises(SourceListError, match="not a file"):
        read_sources_file(tmp_path)
    big = tmp_path / "big.txt"
    big.write_bytes(b"csi://0\n" * 10_000)
    with pytest.raises(SourceListError, match="KiB"):
        read_sources_file(big)


def test_names_on_the_command_line_and_rois(tmp_path):
    existing = tmp_path / "a=b.avi"
    existing.write_bytes(b"")
    assert named("door=rtsp://cam/1") == ("door", "rtsp://cam/1")
    assert named(str(existing)) == (None, str(existing))  # a file of that name is the file
    assert named("videotestsrc num-buffers=40 ! appsink") == (None, "videotestsrc num-buffers=40 ! appsink")
    assert source_entries([0], ["door=x.avi"], [SourceEntry("y.avi", "yard", (1, 2, 3, 4))], roi=(0, 0, 9, 9)) == [
        SourceEntry("0", None, (0, 0, 9, 9), 0), SourceEntry("x.avi", "door", (0, 0, 9, 9)),
        SourceEntry("y.avi", "yard", (1, 2, 3, 4))]
    assert parse_roi("10,20,300,200") == (10, 20, 300, 200)
    for bad in ("1,2,3", "1,2,0,4", "-1,2,3,4", "a,b,c,d"):
        with pytest.raises(ValueError):
            parse_roi(bad)


@pytest.mark.parametrize("flags, says", [
    (["--max-batch", "0"], "--max-batch must be 1 to 64"),
    (["--csi-resize"], "door.avi is not csi://N"),  # several CSI cameras scale each in its own pipeline
    (["--roi", "1,2,3"], "--roi: roi '1,2,3' is not X,Y,W,H"),
    (["--crop", "middle"], "--crop: invalid choice: 'middle'"),
])
def test_usage_errors_with_several_sources(photo_onnx, videos, capsys, flags, says):
    code = main(["--model", str(photo_onnx), "--source", str(videos["door"]), "--source", str(videos["yard"]),
                 *flags])
    err = capsys.readouterr().err
    assert code == 2 and says in err and err.count("\n") == 1, err


def test_image_and_sources_together_or_nothing_at_all(photo_onnx, videos, capsys):
    assert main(["--model", str(photo_onnx), "--image", str(videos["door"]), "--source", str(videos["yard"])]) == 2
    assert "--image classifies files" in capsys.readouterr().err
    assert main(["--model", str(photo_onnx)]) == 2
    assert "say what to classify" in capsys.readouterr().err


# -- one batch, several sources


def test_a_batch_gives_what_each_frame_gives_alone(photo_onnx, photos):
    classifier = Classifier.open(photo_onnx, topk=3)
    assert classifier.max_batch > 1  # edge-export's ONNX has a dynamic batch axis
    frames = [np.ascontiguousarray(photos[n][..., ::-1]) for n in ("chelsea", "coffee", "rocket")]
    together = classifier.classify_many(frames)
    for frame, batched in zip(frames, together):
        alone = classifier.classify(frame)
        assert batched.label == alone.label
        np.testing.assert_allclose(batched.probabilities, alone.probabilities, atol=1e-5)
        assert set(batched.ms) == {"preprocess", "infer", "topk"}


class ShapeRecorder:
    """A backend stand-in that records the batch sizes it is run with (as TensorRT builds an engine per shape)."""

    def __init__(self, inner) -> None:
        self.inner, self.shapes = inner, []
        for name in ("metadata", "input_shape", "input_dtype", "num_classes", "provider"):
            setattr(self, name, getattr(inner, name))

    def run(self, batch):
        self.shapes.append(batch.shape[0])
        return self.inner.run(batch)


def test_a_fixed_batch_pads_short_batches_and_keeps_each_answer(photo_onnx, photos):
    classifier = Classifier.open(photo_onnx, topk=2)
    recorder = ShapeRecorder(classifier.backend)
    classifier.backend = recorder
    frames = [np.ascontiguousarray(photos[n][..., ::-1]) for n in ("chelsea", "coffee", "rocket")]
    loose = classifier.classify_many(frames[:2])
    classifier.fix_batch(3)
    padded = classifier.classify_many(frames[:2]) + classifier.classify_many(frames[2:])
    assert recorder.shapes == [2, 3, 3, 3]  # loose, the warm-up at the fixed size, then two padded batches
    assert [p.label for p in padded] == [p.label for p in loose] + [classifier.classify(frames[2]).label]
    np.testing.assert_allclose(padded[0].probabilities, loose[0].probabilities, atol=1e-5)


def test_only_tensorrt_with_several_sources_gets_a_fixed_batch():
    from types import SimpleNamespace

    from edge.cli import _fixed_batch

    def fake(provider: str, max_batch: int = 64):
        return SimpleNamespace(backend=SimpleNamespace(provider=provider), max_batch=max_batch)

    assert _fixed_batch(fake("TensorrtExecutionProvider"), 3, 8) == 3
    assert _fixed_batch(fake("TensorrtExecutionProvider"), 12, 8) == 8
    assert _fixed_batch(fake("TensorrtExecutionProvider"), 1, 8) is None
    assert _fixed_batch(fake("TensorrtExecutionProvider", max_batch=1), 3, 8) is None  # a fixed-batch graph
    assert _fixed_batch(fake("CUDAExecutionProvider"), 3, 8) is None
    assert _fixed_batch(fake("CPUExecutionProvider"), 3, 8) is None


def test_two_videos_in_one_process_every_frame_of_each_in_order(photo_onnx, videos, capsys, tmp_path):
    code = main(["--model", str(photo_onnx), "--source", f"door={videos['door']}", "--source", str(videos["yard"]),
                 "--json", "--stats-interval", "0", "--output", str(tmp_path / "out.avi")])
    assert code == 0, capsys.readouterr().err
    grouped = by_source(records(capsys))
    assert set(grouped) == {"door", str(videos["yard"])}
    assert [r["frame"] for r in grouped["door"]] == list(range(6))
    assert [r["label"] for r in grouped["door"]] == ["chelsea"] * 3 + ["coffee"] * 3
    assert [r["label"] for r in grouped[str(videos["yard"])]] == ["rocket"] * 2 + ["astronaut"] * 2 + ["camera"] * 2
    import cv2

    for name, count in (("door", 6), ("yard", 6)):  # a video per source, named by the source
        capture = cv2.VideoCapture(str(tmp_path / f"out-{name}.avi"))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == count
        capture.release()


@pytest.mark.parametrize("depth", [None, "0", "2"])
def test_several_videos_read_on_demand_or_ahead_give_every_frame(photo_onnx, videos, capsys, depth):
    """The default on a CPU is on demand (each file asked for its frame when a batch is made); an explicit
    --read-ahead 0 did hang with several sources, as a poll alone never let a file read."""
    ahead = ["--read-ahead", depth] if depth else []
    code = main(["--model", str(photo_onnx), "--source", f"a={videos['door']}", "--source", f"b={videos['yard']}",
                 "--json", "--stats-interval", "0", *ahead])
    assert code == 0, capsys.readouterr().err
    grouped = by_source(records(capsys))
    assert [r["frame"] for r in grouped["a"]] == list(range(6)) == [r["frame"] for r in grouped["b"]]
    assert [r["label"] for r in grouped["b"]] == ["rocket"] * 2 + ["astronaut"] * 2 + ["camera"] * 2


def test_human_lines_say_each_sources_own_label_changes(photo_onnx, videos, capsys):
    assert main(["--model", str(photo_onnx), "--source", f"a={videos['door']}", "--source", f"b={videos['door']}",
                 "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split(" (")[0] for line in lines) == ["a: chelsea", "a: coffee", "b: chelsea", "b: coffee"]


def test_sources_file_with_a_region_of_interest(photo_onnx, videos, tmp_path, capsys):
    listed = tmp_path / "sources.txt"
    # yard's frames are 640x480 photos; its ROI keeps the left half only
    listed.write_text(f"door={videos['door']}\nyard={videos['yard']} roi=0,0,320,480\n", encoding="utf-8")
    assert main(["--model", str(photo_onnx), "--sources", str(listed), "--json", "--stats-interval", "0"]) == 0
    grouped = by_source(records(capsys))
    assert len(grouped["door"]) == 6 and len(grouped["yard"]) == 6
    listed.write_text(f"yard={videos['yard']} roi=600,0,320,480\n", encoding="utf-8")
    assert main(["--model", str(photo_onnx), "--sources", str(listed), "--json", "--stats-interval", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "edge-classify: yard: --roi 600,0,320,480 is outside the 640x480 frame (x+w = 920 > 640)\n"


def test_a_source_that_cannot_be_opened_does_not_stop_the_others(photo_onnx, videos, tmp_path, capsys):
    broken = tmp_path / "broken.avi"  # there, but not a video: its open fails at run time, not at the flags
    broken.write_bytes(b"RIFF" + bytes(5000))
    code = main(["--model", str(photo_onnx), "--source", str(videos["door"]), "--source", f"back={broken}",
                 "--json", "--stats-interval", "0"])
    captured = capsys.readouterr()
    found = by_source([json.loads(line) for line in captured.out.splitlines()])
    assert code != 0 and len(found[str(videos["door"])]) == 6 and "back" not in found
    assert "1 of 2 sources failed (back)" in captured.err and "Traceback" not in captured.err
    missing = tmp_path / "gone.avi"  # a file that is not there: the flags are wrong, nothing starts
    assert main(["--model", str(photo_onnx), "--source", str(videos["door"]), "--source", str(missing)]) == 2
    assert capsys.readouterr().err == f"edge-classify: {missing}: no such video file\n"


def test_max_batch_one_takes_turns(photo_onnx, videos, capsys):
    assert main(["--model", str(photo_onnx), "--source", str(videos["door"]), "--source", str(videos["yard"]),
                 "--json", "--max-batch", "1", "--stats-interval", "0"]) == 0
    order = [r["source"] for r in records(capsys)]
    assert len(order) == 12
    first_half = order[:6]
    assert 2 <= first_half.count(str(videos["door"])) <= 4  # turns, not one source after the other


def test_sigterm_stops_all_sources_within_a_second(photo_onnx, videos):
    process = subprocess.Popen([sys.executable, "-m", "edge.cli", "--model", str(photo_onnx), "--loop", "--json",
                                "--source", str(videos["door"]), "--source", str(videos["yard"]),
                                "--source", str(videos["door"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                               env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    seen = set()
    first = threading.Event()

    def read() -> None:
        for line in process.stdout:
            seen.add(json.loads(line)["source"])
            if len(seen) == 2:
                first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(60), process.stderr.read() if process.poll() is not None else "no frames from both sources"
    import signal
    import time

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(10)
    assert time.monotonic() - started < 1.5 and process.returncode == 0, process.stderr.read()


def test_csi_resize_with_several_sources_is_for_csi_cameras_without_a_roi(photo_onnx, tmp_path, capsys):
    listed = tmp_path / "cameras.txt"
    listed.write_text("left=csi://0 roi=0,0,640,480\nright=csi://1\n", encoding="utf-8")
    assert main(["--model", str(photo_onnx), "--sources", str(listed), "--csi-resize"]) == 2
    err = capsys.readouterr().err
    assert "csi://0: its roi is in the camera's pixels" in err and err.count("\n") == 1, err


def test_the_same_source_twice_gets_two_names(photo_onnx, videos, capsys):
    """Each source's records, topics, metrics series and live-view tile go by its name: two must not share one."""
    door = str(videos["door"])
    assert main(["--model", str(photo_onnx), "--source", door, "--source", door, "--json", "--max-frames", "2",
                 "--stats-interval", "0"]) == 0
    grouped = by_source(records(capsys))
    assert sorted(grouped) == [door, f"{door}-2"] and [len(v) for v in grouped.values()] == [2, 2]
