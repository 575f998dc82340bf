"""--image runs: images are a source like a video file; the next one is decoded and preprocessed on the
reader thread while the model runs (read-ahead), through the same queue (edge.sources.frames.FrameBuffer)."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edge.model import backends
from edge.cli import main, plan_concurrency
from edge.settings import Settings
from edge.sources.images import ImageInput, ImageSource


def frames_of(source, limit=1000):
    """Every frame ``source`` gives, in the order it gives them."""
    out = []
    source.start()
    try:
        while len(out) < limit:
            frame = source.next(timeout=1.0)
            if frame is None:
                if source.finished:
                    break
                continue
            out.append(frame)
    finally:
        source.close()
    return out


def picture_files(folder, photo, count, bad_every=0):
    folder.mkdir(exist_ok=True)
    import cv2

    paths = []
    for i in range(count):
        path = folder / f"{i:02d}.png"
        if bad_every and i % bad_every == 0:
            path.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        else:
            cv2.imwrite(str(path), photo)
        paths.append(path)
    return [ImageInput(str(p), p, relative=p.name) for p in paths]


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_images_come_in_order_with_failures_in_their_place(depth, photos, tmp_path):
    items = picture_files(tmp_path / "pics", np.ascontiguousarray(photos["coffee"][..., ::-1]), 7, bad_every=3)
    items.append(ImageInput("missing.jpg", None, "no such file"))
    frames = frames_of(ImageSource(items, read_ahead=depth, prepare=lambda image: image[:8, :8].copy()))
    assert [f.number for f in frames] == list(range(8)) and [f.name for f in frames] == [i.source for i in items]
    for frame in frames:
        if frame.number % 3 == 0 or frame.number == 7:
            assert frame.error and frame.image is None and frame.batch is None
        else:
            assert frame.error is None and frame.batch.shape == (8, 8, 3)
            assert set(frame.ms) == {"decode", "preprocess"}


@pytest.mark.parametrize("depth", [1, 3])
def test_the_reader_stays_at_most_depth_images_ahead(depth, photos, tmp_path):
    items = picture_files(tmp_path / "pics", np.ascontiguousarray(photos["coffee"][..., ::-1]), 12)
    prepared = []
    source = ImageSource(items, read_ahead=depth, prepare=lambda image: prepared.append(1) or image)
    source.start()
    try:
        for taken in range(1, 6):
            assert source.next(timeout=10.0) is not None
            time.sleep(0.05)  # a slow model: the reader fills the queue and must wait
            # taken + depth waiting + one being read (blocked on the full queue)
            assert len(prepared) <= taken + depth + 1
    finally:
        source.close()


def test_closing_early_waits_for_the_image_in_hand(photos, tmp_path):
    """Gone on return, not later: a reader still inside OpenCV at interpreter exit aborts the process."""
    items = picture_files(tmp_path / "pics", np.ascontiguousarray(photos["coffee"][..., ::-1]), 50)

    def slow(image):
        time.sleep(0.05)
        return image

    source = ImageSource(items, read_ahead=1, prepare=slow)
    source.start()
    assert source.next(timeout=10.0).number == 0
    source.close()  # what `| head`, Ctrl-C or an error in the loop does
    assert not any(t.name == "edge-images" for t in threading.enumerate())


def test_a_reader_that_fails_outside_an_image_does_not_leave_the_loop_waiting(tmp_path):
    class Exploding(list):
        def __iter__(self):
            yield ImageInput("missing.jpg", None, "no such file")
            raise OSError("the folder went away")

    source = ImageSource([], read_ahead=1)
    source.items = Exploding()
    source.start()
    assert source.next(timeout=10.0).error == "no such file"
    with pytest.raises(OSError, match="went away"):  # raised where the loop stands, not lost on the thread
        for _ in range(100):
            source.next(timeout=0.1)
    source.close()


def test_without_output_a_waiting_image_holds_only_its_model_input(photos, tmp_path):
    items = picture_files(tmp_path / "pics", np.ascontiguousarray(photos["coffee"][..., ::-1]), 3)
    kept = frames_of(ImageSource(items, read_ahead=1, prepare=lambda image: image[:2], keep_image=True))
    dropped = frames_of(ImageSource(items, read_ahead=1, prepare=lambda image: image[:2], keep_image=False))
    assert all(f.image is not None for f in kept) and all(f.image is None for f in dropped)


def images_settings(**flags):
    return Settings(image=("x",), **flags)


def test_with_a_gpu_several_images_are_read_one_ahead(tmp_path):
    items = [ImageInput(str(tmp_path / f"{i}.jpg"), tmp_path / f"{i}.jpg") for i in range(5)]
    assert plan_concurrency(images_settings(), items, gpu=True) == (1, 0)
    assert plan_concurrency(images_settings(), items[:1], gpu=True).read_ahead == 0  # one image: nothing to overlap
    assert plan_concurrency(images_settings(read_ahead=0), items, gpu=True).read_ahead == 0
    assert plan_concurrency(images_settings(read_ahead=3), items, gpu=True) == (3, 0)


def test_with_output_images_are_not_read_ahead_unless_asked(tmp_path):
    """Each waiting image would hold its full-size frame for drawing (300 MB at 100 MP)."""
    from pathlib import Path

    items = [ImageInput(str(tmp_path / f"{i}.jpg"), tmp_path / f"{i}.jpg") for i in range(5)]
    assert plan_concurrency(images_settings(output=Path("out")), items, gpu=True).read_ahead == 0
    assert plan_concurrency(images_settings(output=Path("out"), read_ahead=2), items, gpu=True).read_ahead == 2


def test_streams_read_a_video_ahead_only_with_a_gpu():
    """On a CPU, decoding ahead competes with the model for the cores; on a GPU it overlaps inference."""
    stream = Settings(source="clip.avi")
    assert plan_concurrency(stream, [], gpu=False) == (0, 0) and plan_concurrency(stream, [], gpu=True) == (1, 0)
    assert plan_concurrency(Settings(source="clip.avi", read_ahead=2), [], gpu=False) == (2, 0)


def items_of(paths):
    from edge.sources.images import expand_inputs

    return expand_inputs([str(p) for p in paths])


def test_on_a_cpu_large_images_are_read_ahead_and_the_reader_gets_a_core(tmp_path, photos):
    import cv2

    small = [tmp_path / f"small{i}.jpg" for i in range(2)]
    large = [tmp_path / f"large{i}.jpg" for i in range(2)]
    for path in small:
        cv2.imwrite(str(path), np.ascontiguousarray(photos["coffee"][..., ::-1]))  # 600x400
    for path in large:
        cv2.imwrite(str(path), cv2.resize(np.ascontiguousarray(photos["coffee"][..., ::-1]), (1280, 720)))
    cpu = dict(gpu=False)
    assert plan_concurrency(images_settings(), items_of(large), **cpu) == (1, 1)
    assert plan_concurrency(images_settings(), items_of(small), **cpu) == (0, 0)
    assert plan_concurrency(images_settings(read_ahead=1), items_of(small), **cpu) == (1, 1)  # asked for
    assert plan_concurrency(images_settings(read_ahead=0), items_of(large), **cpu) == (0, 0)
    assert plan_concurrency(images_settings(), items_of(large[:1]), **cpu) == (0, 0)
    missing = items_of([tmp_path / "missing.jpg", tmp_path / "missing2.jpg"])
    assert plan_concurrency(images_settings(), missing, **cpu) == (0, 0)


def test_model_keeps_all_cores_but_the_decoders_on_a_cpu(monkeypatch):
    monkeypatch.setattr(backends, "usable_cores", lambda: 4)
    assert backends.cpu_threads_beside(1) == 3 and backends.cpu_threads_beside(0) is None
    monkeypatch.setattr(backends, "usable_cores", lambda: 1)
    assert backends.cpu_threads_beside(1) == 1


def test_spare_cores_size_onnxruntime_without_spinning_on_a_cpu_only(monkeypatch):
    import onnxruntime as ort

    from edge.model.backends.onnxruntime import CPU, CUDA, set_cpu_threads

    monkeypatch.setattr(backends, "usable_cores", lambda: 4)

    def sized(providers, threads, spare):
        options = ort.SessionOptions()
        set_cpu_threads(options, providers, threads, spare)
        return options.intra_op_num_threads, options.get_session_config_entry("session.intra_op.allow_spinning")

    assert sized([CPU], None, 1) == (3, "0")
    assert sized([CPU], 2, 1) == (2, "0")  # --threads wins
    assert sized([CUDA, CPU], None, 1) == (1, "0")  # a GPU's default is unchanged
    untouched = ort.SessionOptions()
    set_cpu_threads(untouched, [CPU], None, 0)
    assert untouched.intra_op_num_threads == 0  # nothing kept: onnxruntime's defaults


def run_json(args, capsys):
    code = main(args + ["--json"])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_a_folder_gives_the_same_answers_in_the_same_order_ahead_or_in_turn(photo_onnx, photo_dir, tmp_path,
                                                                            capsys):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    args = ["--model", str(photo_onnx), "--image", str(photo_dir), str(tmp_path / "broken.jpg"), "--topk", "2"]
    code_ahead, ahead, err_ahead = run_json(args + ["--read-ahead", "1"], capsys)
    code_turn, turn, err_turn = run_json(args + ["--read-ahead", "0"], capsys)
    assert code_ahead == code_turn == 1  # the broken file fails, the photos do not
    assert [r["source"] for r in ahead] == [r["source"] for r in turn] and len(ahead) >= 6
    for a, b in zip(ahead, turn):  # the model's threads differ (1 vs all), so scores may differ in the last bits
        assert [(k["label"], k["index"]) for k in a["topk"]] == [(k["label"], k["index"]) for k in b["topk"]]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert set(a["ms"]) == {"decode", "preprocess", "infer"}
    assert err_ahead == err_turn and err_ahead.count("\n") == 1 and "broken.jpg" in err_ahead


def test_read_ahead_below_zero_with_images_is_one_line(photo_onnx, photo_dir, capsys):
    code = main(["--model", str(photo_onnx), "--image", str(photo_dir), "--read-ahead", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--read-ahead" in err


def test_error_lines_are_not_lost_while_the_next_image_decodes(photo_onnx, photos, tmp_path):
    """Decoding redirects file descriptor 2 for libjpeg's warnings: the error lines the main thread writes
    meanwhile must still reach the terminal, once each, and never count as the decoder's warnings."""
    import cv2
    import numpy as np

    folder = tmp_path / "mixed"
    folder.mkdir()
    big = cv2.resize(np.ascontiguousarray(photos["coffee"][..., ::-1]), (2400, 1600))  # a PNG decodes for ~30 ms
    good = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    for i in range(16):  # bad and good files take turns, so errors are written while good ones decode
        if i % 2:
            (folder / f"{i:02d}_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        else:
            (folder / f"{i:02d}_good.png").write_bytes(good)
    # A process of its own: only there is file descriptor 2 the real one (pytest's capture replaces sys.stderr).
    run = subprocess.run([sys.executable, "-m", "edge.cli", "--model", str(photo_onnx), "--image", str(folder),
                          "--json", "--read-ahead", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=300)
    out, err = run.stdout, run.stderr
    assert run.returncode == 1
    assert len(out.splitlines()) == 8 and all("_good.png" in line for line in out.splitlines())
    lines = err.splitlines()
    assert sorted(lines) == sorted(set(lines)) and len(lines) == 8, err
    assert all("_bad.png" in line for line in lines)


def test_our_lines_never_wait_for_a_decode_nor_land_in_its_warnings(tmp_path):
    """With its own stderr descriptor, a line written while another thread has fd 2 redirected (a decode in
    progress) reaches the terminal at once, and is not taken for one of the decoder's warnings."""
    script = """
import sys, threading
from edge.errors import print_error, use_own_stderr
from edge.sources.imagecheck import native_warnings
use_own_stderr()
inside, done = threading.Event(), threading.Event()
caught = []
def decode():
    with native_warnings() as warnings:
        inside.set()
        done.wait(30)
    caught.extend(warnings)
worker = threading.Thread(target=decode)
worker.start()
inside.wait(30)
print_error("edge-classify: x.jpg: not an image")   # while fd 2 is redirected: must not block
done.set()
worker.join()
print("caught", caught)
"""
    run = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "edge-classify: x.jpg: not an image\n" and run.stdout.strip() == "caught []"


def test_the_size_probe_never_blocks_on_a_fifo_named_like_an_image(tmp_path):
    import os

    from edge.sources.images import header_pixels

    fifo = tmp_path / "0_camera.jpg"
    os.mkfifo(str(fifo))  # opened for reading, a FIFO waits for a writer: the probe must not
    assert header_pixels(fifo) is None and header_pixels(tmp_path / "missing.jpg") is None
    assert plan_concurrency(images_settings(), items_of([fifo, tmp_path / "other.jpg"]), gpu=False) == (0, 0)


def slow_pngs(folder, photos, count=6):
    """Large PNGs (each decodes for tens of ms): an early exit finds the worker inside OpenCV."""
    import cv2

    folder.mkdir()
    big = cv2.resize(np.ascontiguousarray(photos["coffee"][..., ::-1]), (3000, 2000))
    data = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    for i in range(count):
        (folder / f"{i}.png").write_bytes(data)
    return folder


def test_a_reader_that_goes_away_mid_run_exits_141_not_an_abort(photo_onnx, photos, tmp_path):
    folder = slow_pngs(tmp_path / "big", photos)
    run = subprocess.Popen([sys.executable, "-m", "edge.cli", "--model", str(photo_onnx), "--image", str(folder),
                            "--json", "--read-ahead", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.read(10)  # `| head -c 10`: the first line has come, then the reader leaves
    run.stdout.close()
    err = run.stderr.read().decode()
    assert run.wait(timeout=120) == 141 and err == "", err


@pytest.mark.slow  # a subprocess run over 40 large PNGs: tens of seconds on a loaded 2-core machine
def test_ctrl_c_mid_run_exits_130_not_an_abort(photo_onnx, photos, tmp_path):
    import signal

    folder = slow_pngs(tmp_path / "big", photos, count=40)
    run = subprocess.Popen([sys.executable, "-m", "edge.cli", "--model", str(photo_onnx), "--image", str(folder),
                            "--json", "--read-ahead", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.readline()  # classifying: the worker is decoding the next images
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130 and err.decode().strip().endswith("interrupted"), err
