"""--image runs: the next image is decoded and preprocessed on a second thread while the model runs."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edge import backends
from edge.cli import image_read_ahead, main, wants_decoder_core
from edge.errors import EdgeError
from edge.prefetch import read_ahead


def test_results_come_back_in_order_with_failures_in_their_place():
    def prepare(n):
        if n % 3 == 0:
            raise ValueError(f"bad {n}")
        time.sleep(0.002 * (n % 2))  # uneven work, so a race would show as a reordering
        return n * 10

    out = list(read_ahead(prepare, range(10), depth=2))
    assert [job for job, _ in out] == list(range(10))
    for job, result in out:
        if job % 3 == 0:
            assert isinstance(result, ValueError) and str(result) == f"bad {job}"
        else:
            assert result == job * 10


def test_depth_zero_runs_inline_on_the_callers_thread():
    threads = []
    out = list(read_ahead(lambda n: threads.append(threading.current_thread()) or n, [1, 2], depth=0))
    assert out == [(1, 1), (2, 2)] and set(threads) == {threading.current_thread()}


@pytest.mark.parametrize("depth", [1, 3])
def test_the_worker_stays_at_most_depth_results_ahead_of_the_reader(depth):
    started = []

    def prepare(n):
        started.append(n)
        return n

    results = read_ahead(prepare, range(20), depth)
    for taken, (job, _) in enumerate(results, start=1):
        time.sleep(0.02)  # a slow reader: the worker fills the queue and must wait
        # taken by the reader + depth waiting + one being prepared (blocked on the full queue)
        assert len(started) <= taken + depth + 1, (job, started)
    assert started == list(range(20))


def test_a_reader_that_stops_early_waits_for_the_worker_to_end():
    started = []

    def slow(n):
        started.append(n)
        time.sleep(0.05)  # the job in hand when the reader leaves (an image being decoded)
        return n

    results = read_ahead(slow, range(1000), depth=1)
    assert next(results) == (0, 0)
    results.close()  # what a `| head` or an exception in the reader does to the generator
    # Gone on return, not later: a worker still inside OpenCV at interpreter exit aborts the process.
    assert not any(t.name == "edge-read-ahead" for t in threading.enumerate()) and len(started) <= 4


def test_a_worker_that_fails_outside_the_jobs_does_not_leave_the_reader_waiting():
    def jobs():
        yield 1
        raise OSError("the folder went away")

    results = read_ahead(lambda n: n, jobs(), depth=1)
    assert next(results) == (1, 1)
    with pytest.raises(OSError, match="went away"):  # raised where the reader stands, not lost on the thread
        next(results)
    exit_request = list(read_ahead(lambda n: sys.exit(3), [1], depth=1))
    assert isinstance(exit_request[0][1], SystemExit)  # handed over, for the reader to raise


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider", "cuda"])
def test_with_a_gpu_several_images_are_read_one_ahead(provider):
    assert image_read_ahead(None, 5, provider, decoder_core=False) == 1
    assert image_read_ahead(None, 1, provider, decoder_core=False) == 0  # one image: nothing to overlap
    assert image_read_ahead(0, 5, provider, decoder_core=False) == 0


def test_with_output_images_are_not_read_ahead_unless_asked():
    """Each waiting image would hold its full-size frame for drawing (300 MB at 100 MP)."""
    assert image_read_ahead(None, 5, "cuda", decoder_core=False, labelled=True) == 0
    assert image_read_ahead(2, 5, "cuda", decoder_core=False, labelled=True) == 2


@pytest.mark.parametrize("provider", ["CPUExecutionProvider", "cpu"])
def test_on_a_cpu_images_are_read_ahead_only_when_the_decoder_has_a_core(provider):
    assert image_read_ahead(None, 5, provider, decoder_core=True) == 1
    assert image_read_ahead(None, 5, provider, decoder_core=False) == 0
    assert image_read_ahead(3, 5, provider, decoder_core=True) == 3


def items_of(paths):
    from edge.images import expand_inputs

    return expand_inputs([str(p) for p in paths])


def test_the_decoder_gets_a_core_for_large_images_or_when_asked(tmp_path, photos):
    import cv2

    small = [tmp_path / f"small{i}.jpg" for i in range(2)]
    large = [tmp_path / f"large{i}.jpg" for i in range(2)]
    for path in small:
        cv2.imwrite(str(path), np.ascontiguousarray(photos["coffee"][..., ::-1]))  # 600x400
    for path in large:
        cv2.imwrite(str(path), cv2.resize(np.ascontiguousarray(photos["coffee"][..., ::-1]), (1280, 720)))
    assert wants_decoder_core(None, items_of(large)) and not wants_decoder_core(None, items_of(small))
    assert wants_decoder_core(1, items_of(small))  # --read-ahead 1 asks for it
    assert not wants_decoder_core(0, items_of(large)) and not wants_decoder_core(None, items_of(large[:1]))
    assert not wants_decoder_core(None, items_of(large), labelled=True) and wants_decoder_core(1, items_of(large), True)
    assert not wants_decoder_core(None, items_of([tmp_path / "missing.jpg", tmp_path / "missing2.jpg"]))
    with pytest.raises(EdgeError, match="--read-ahead"):
        wants_decoder_core(-1, items_of(large))


def test_model_keeps_all_cores_but_the_decoders_on_a_cpu(monkeypatch):
    monkeypatch.setattr(backends, "usable_cores", lambda: 4)
    assert backends.cpu_threads_beside(1) == 3 and backends.cpu_threads_beside(0) is None
    monkeypatch.setattr(backends, "usable_cores", lambda: 1)
    assert backends.cpu_threads_beside(1) == 1


def test_spare_cores_size_onnxruntime_without_spinning_on_a_cpu_only(monkeypatch):
    import onnxruntime as ort

    from edge.backends.onnxruntime import CPU, CUDA, set_cpu_threads

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


def test_error_messages_wait_until_no_decoder_holds_stderr(capsys):
    from edge.errors import STDERR_LOCK, print_error

    holding, released = threading.Event(), threading.Event()

    def decode_for_a_while():
        with STDERR_LOCK:
            holding.set()
            time.sleep(0.3)
            released.set()

    holder = threading.Thread(target=decode_for_a_while)
    holder.start()
    assert holding.wait(10)
    print_error("edge-classify: x.jpg: not an image")
    assert released.is_set()  # written only once the decoder had given fd 2 back
    holder.join()
    assert capsys.readouterr().err == "edge-classify: x.jpg: not an image\n"


def test_the_size_probe_never_blocks_on_a_fifo_named_like_an_image(tmp_path):
    import os

    from edge.images import header_pixels

    fifo = tmp_path / "0_camera.jpg"
    os.mkfifo(str(fifo))  # opened for reading, a FIFO waits for a writer: the probe must not
    assert header_pixels(fifo) is None and header_pixels(tmp_path / "missing.jpg") is None
    assert not wants_decoder_core(None, items_of([fifo, tmp_path / "other.jpg"]))


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


def test_ctrl_c_mid_run_exits_130_not_an_abort(photo_onnx, photos, tmp_path):
    import signal

    folder = slow_pngs(tmp_path / "big", photos, count=40)
    run = subprocess.Popen([sys.executable, "-m", "edge.cli", "--model", str(photo_onnx), "--image", str(folder),
                            "--json", "--read-ahead", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run.stdout.readline()  # classifying: the worker is decoding the next images
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130 and err.decode().strip().endswith("interrupted"), err
