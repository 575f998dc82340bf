"""edge-classify as installed on a device: photos and a clip, every artifact kind, the host's answers.

Each photo in the bundle is named after the class the photo model gives it, so the label is checked
against the file name as well as against what the host's run printed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import command, one_line, run, same_answers

FP32_TOLERANCE, FP16_TOLERANCE = 0.01, 0.03  # softmax probability, between tiers


def tolerance(stem: str) -> float:
    return FP16_TOLERANCE if stem.startswith("fp16") else FP32_TOLERANCE


@pytest.mark.parametrize("stem", ["fp32_uint8", "fp16_uint8", "fp32_float", "fp16_float"])
def test_photos_folder_gives_the_hosts_answers(stem, bundle):
    done = run("edge-classify", "--model", bundle.models[stem], "--image", bundle.photos, "--json")
    assert done.code == 0, done.err
    results = done.json_lines()
    assert [Path(r["source"]).stem for r in results] == sorted(p.stem for p in bundle.photos.glob("*.jpg"))
    assert all(r["label"] == Path(r["source"]).stem for r in results), results
    same_answers(results, bundle.expected[stem]["images"], score_tolerance=tolerance(stem))


@pytest.mark.parametrize("stem", ["fp32_uint8", "fp16_uint8", "fp16_float"])
def test_clip_gives_the_hosts_answers_frame_by_frame(stem, bundle):
    done = run("edge-classify", "--model", bundle.models[stem], "--source", bundle.clip, "--max-frames", 30,
               "--json")
    assert done.code == 0, done.err
    results = done.json_lines()
    assert [r["frame"] for r in results] == list(range(30))
    same_answers(results, bundle.expected[stem]["stream"], score_tolerance=tolerance(stem))


@pytest.mark.parametrize("stem", ["fp32_uint8", "fp16_float"])
def test_two_sources_in_one_process_each_give_the_hosts_answers(stem, bundle, tmp_path):
    """Two sources at once (one batch of two per step), named in a sources file: each gives, frame by frame,
    what the clip gives alone on the host."""
    listed = tmp_path / "sources.txt"
    listed.write_text("left={0}\nright={0}\n".format(bundle.clip), encoding="utf-8")
    done = run("edge-classify", "--model", bundle.models[stem], "--sources", listed, "--max-frames", 30, "--json")
    assert done.code == 0, done.err
    results = done.json_lines()
    for name in ("left", "right"):
        mine = [r for r in results if r["source"] == name]
        expected = bundle.expected[stem]["stream"]
        assert [(r["frame"], r["label"]) for r in mine] == [(r["frame"], r["label"]) for r in expected]
        assert all(abs(a["score"] - b["score"]) <= tolerance(stem) for a, b in zip(mine, expected))


def test_human_output_names_each_photo(bundle):
    done = run("edge-classify", "--model", bundle.models["fp16_uint8"], "--image", bundle.photos / "chelsea.jpg",
               "--topk", 2)
    assert done.code == 0, done.err
    assert done.out.splitlines()[0].startswith(str(bundle.photos / "chelsea.jpg") + ": chelsea (")


def test_a_bad_file_beside_good_ones_is_one_line_and_exit_1(bundle, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    done = run("edge-classify", "--model", bundle.models["fp16_uint8"], "--json",
               "--image", tmp_path / "broken.jpg", bundle.photos / "coffee.jpg")
    assert done.code == 1
    assert "broken.jpg" in one_line(done.err)
    assert [r["label"] for r in done.json_lines()] == ["coffee"]


@pytest.mark.parametrize("argv, needle", [
    (["--camera", "63"], "camera"),
    (["--source", "csi://0"], "GStreamer"),
    (["--source", "/nonexistent/clip.mp4"], "clip.mp4"),
    (["--image", "x.jpg", "--topk", "0"], "--topk"),
])
def test_sources_and_options_that_cannot_work_exit_2_with_one_line(argv, needle, bundle):
    done = run("edge-classify", "--quiet", "--model", bundle.models["fp16_uint8"], *argv, timeout=60)
    assert done.code == 2, (done.out, done.err)
    assert needle in one_line(done.err)


def test_a_model_that_is_not_onnx_exits_2(tmp_path):
    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"not a model")
    done = run("edge-classify", "--model", fake, "--image", fake)
    assert done.code == 2 and "m.onnx" in one_line(done.err)


def test_an_onnx_run_never_imports_torch(bundle):
    code = ("import sys; from edge.cli import main; "
            f"code = main(['--model', {str(bundle.models['fp16_uint8'])!r}, '--image', "
            f"{str(bundle.photos / 'rocket.jpg')!r}, '--quiet']); "
            "print('torch' in sys.modules, code)")
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "False 0", (done.stdout, done.stderr)


def test_a_reader_that_goes_away_ends_the_run_quietly(bundle):
    """`edge-classify ... --json | head -1`: exit 141 (as for SIGPIPE), no traceback, no line per frame."""
    argv = ["--quiet", "--json", "--loop", "--model", str(bundle.models["fp16_uint8"]), "--source", str(bundle.clip)]
    process = subprocess.Popen(command("edge-classify") + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
    first = process.stdout.readline()
    process.stdout.close()  # what head does after its line
    try:
        code = process.wait(timeout=60)
    finally:
        process.kill()
    assert first.startswith("{") and code == 141
    assert process.stderr.read() == ""


def test_a_stream_password_is_kept_out_of_the_name_it_is_shown_by():
    from edge.sources.capture import parse_source

    spec = parse_source(source="rtsp://admin:s3cret@192.168.1.20:554/live")
    assert spec.name == "rtsp://admin:***@192.168.1.20:554/live" and "s3cret" in spec.target
