"""edge-classify --image: parity with the seed pipeline, JSON fields, both backends, defaults, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PHOTO_ARCH
from reference import seed_top1

from edge.cli import main
from export.exporter import export_artifact

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, photo_model, photo_onnx):
    """The photo model as FP32 (conftest's, shared) and FP16 ONNX, FP32 TorchScript, and float-input ONNX."""
    model, labels = photo_model
    folder = tmp_path_factory.mktemp("artifacts")
    made = {"onnx": photo_onnx}
    for key, name, kwargs in [("onnx16", "m16.onnx", {"precision": "fp16"}),
                              ("ts", "m.ts", {}), ("float", "f.onnx", {"input_kind": "float"})]:
        made[key] = export_artifact(model, folder / name, arch=PHOTO_ARCH, labels=labels, **kwargs)
    return made


def run_json(capsys, *argv):
    code = main(list(argv) + ["--json"])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


@pytest.fixture(scope="module")
def seed_answers(photo_model, photo_dir):
    """The seed pipeline's top-1 for each photo file, computed once for every artifact kind."""
    return {path: seed_top1(photo_model[0], path) for path in photo_dir.iterdir()}


@pytest.mark.parametrize("kind", ["onnx", "onnx16", "ts", "float"])
def test_same_top1_as_the_seed_pipeline_on_real_photos(kind, artifacts, photo_model, photo_dir, seed_answers, capsys):
    model, labels = photo_model
    code, records, err = run_json(capsys, "--model", str(artifacts[kind]), "--image", str(photo_dir))
    assert code == 0, err
    assert len(records) == len(labels)
    for record in records:
        expected = seed_answers[Path(record["source"])]
        assert record["index"] == expected and record["label"] == labels[expected]
        assert Path(record["source"]).stem == record["label"]  # the model names each photo


def test_json_fields(artifacts, photo_dir, capsys):
    code, records, _ = run_json(capsys, "--model", str(artifacts["onnx"]), "--image", str(photo_dir / "chelsea.jpg"),
                                "--topk", "3")
    assert code == 0
    (record,) = records
    assert set(record) == {"source", "label", "index", "score", "topk", "ms"}
    assert record["source"] == str(photo_dir / "chelsea.jpg")
    assert [k["index"] for k in record["topk"]][0] == record["index"] and len(record["topk"]) == 3
    scores = [k["score"] for k in record["topk"]]
    assert scores == sorted(scores, reverse=True) and 0 < record["score"] <= 1 and record["score"] == scores[0]
    assert set(record["ms"]) == {"decode", "preprocess", "infer"} and all(v >= 0 for v in record["ms"].values())


def test_folder_sources_are_joined_with_the_folder_and_sorted(artifacts, photo_dir, tmp_path, capsys):
    nested = tmp_path / "shots" / "b"
    nested.mkdir(parents=True)
    shutil.copy(photo_dir / "coffee.jpg", nested / "x.jpg")
    shutil.copy(photo_dir / "rocket.jpg", tmp_path / "shots" / "a.jpg")
    (tmp_path / "shots" / "notes.txt").write_text("not an image")
    code, records, _ = run_json(capsys, "--model", str(artifacts["onnx"]), "--image", str(tmp_path / "shots"))
    assert code == 0
    assert [r["source"] for r in records] == [str(tmp_path / "shots" / "a.jpg"), str(tmp_path / "shots" / "b/x.jpg")]
    assert [r["label"] for r in records] == ["rocket", "coffee"]


def test_glob_and_human_lines(artifacts, photo_dir, capsys):
    code = main(["--model", str(artifacts["onnx"]), "--image", str(photo_dir / "c*.jpg"), "--topk", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].startswith(f"{photo_dir / 'camera.jpg'}: camera (") and out[1].strip().startswith("1. camera (")
    assert out[3].startswith(f"{photo_dir / 'chelsea.jpg'}: chelsea (")
    assert len(out) == 3 * 3  # camera, chelsea, coffee: a line and two ranks each


def test_output_draws_the_label(artifacts, photo_dir, tmp_path, capsys):
    single = tmp_path / "one.png"
    assert main(["--model", str(artifacts["onnx"]), "--image", str(photo_dir / "coffee.jpg"), "--output",
                 str(single)]) == 0
    drawn = cv2.imread(str(single))
    original = cv2.imread(str(photo_dir / "coffee.jpg"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).max() > 100
    folder = tmp_path / "labelled"
    assert main(["--model", str(artifacts["onnx"]), "--image", str(photo_dir), "--output", str(folder)]) == 0
    assert len(list(folder.iterdir())) == len(list(photo_dir.iterdir()))
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_labels_override(artifacts, photo_model, photo_dir, tmp_path, capsys):
    _, labels = photo_model
    names = tmp_path / "names.txt"
    names.write_text("\n".join(n.upper() for n in labels) + "\n")
    code, records, _ = run_json(capsys, "--model", str(artifacts["onnx"]), "--labels", str(names), "--image",
                                str(photo_dir / "rocket.jpg"))
    assert code == 0 and records[0]["label"] == "ROCKET"


def test_default_model_from_the_cache(artifacts, photo_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("EDGE_MODEL", raising=False)
    monkeypatch.delenv("EDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "edge-classifier").mkdir()
    import edge.model.defaults

    shutil.copy(artifacts["onnx16"], tmp_path / "edge-classifier" / edge.model.defaults.default_model_name())
    code, records, _ = run_json(capsys, "--image", str(photo_dir / "chelsea.jpg"))
    assert code == 0 and records[0]["label"] == "chelsea"
    monkeypatch.setenv("EDGE_MODEL", str(artifacts["ts"]))
    code, records, _ = run_json(capsys, "--image", str(photo_dir / "coffee.jpg"))
    assert code == 0 and records[0]["label"] == "coffee"


def test_default_model_missing_without_export_says_how_to_get_it(photo_dir, tmp_path, monkeypatch, capsys):
    import edge.model.defaults

    monkeypatch.delenv("EDGE_MODEL", raising=False)
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(edge.model.defaults, "export_available", lambda: False)
    monkeypatch.setattr(edge.model.defaults, "default_precision", lambda: "fp16")  # as on a Jetson
    code = main(["--image", str(photo_dir / "chelsea.jpg")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "edge-export --arch mobilenet_v2 --weights pretrained --precision fp16" in err
    assert str(tmp_path / "cache" / "mobilenet_v2_fp16.onnx") in err


@pytest.mark.slow
def test_default_model_is_built_once_when_export_is_here(photo_dir, tmp_path, monkeypatch, capsys):
    """The build runs edge-export in a subprocess; here with random weights, since tests never download."""
    import edge.model.defaults

    monkeypatch.delenv("EDGE_MODEL", raising=False)
    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))
    real = edge.model.defaults.export_command
    monkeypatch.setattr(edge.model.defaults, "export_command",
                        lambda path, precision: [a if a != "pretrained" else "none" for a in real(path, precision)])
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = main(["--image", str(photo_dir / "chelsea.jpg")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "building the default model (mobilenet_v2, ImageNet, FP32: no GPU for onnxruntime here" in captured.err
    assert (tmp_path / "cache" / "mobilenet_v2_fp32.onnx").is_file()  # this test host has no GPU
    assert captured.out.startswith(f"{photo_dir / 'chelsea.jpg'}: ")
    main(["--image", str(photo_dir / "chelsea.jpg")])
    assert "building" not in capsys.readouterr().err  # once


@pytest.mark.parametrize("providers,precision", [(["CPUExecutionProvider"], "fp32"),
                                                 (["CUDAExecutionProvider", "CPUExecutionProvider"], "fp16"),
                                                 (["TensorrtExecutionProvider", "CPUExecutionProvider"], "fp16")])
def test_default_model_is_fp32_without_a_gpu(providers, precision, monkeypatch):
    import onnxruntime

    import edge.model.defaults

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    assert edge.model.defaults.default_precision() == precision
    assert edge.model.defaults.default_model_name() == f"mobilenet_v2_{precision}.onnx"
    assert edge.model.defaults.export_command(Path("m.onnx"), precision)[-3:] == [precision, "--out", "m.onnx"]


@pytest.fixture()
def bad_images(tmp_path, photo_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(photo_dir / "chelsea.jpg", folder / "1_good.jpg")
    (folder / "2_empty.jpg").write_bytes(b"")
    data = (photo_dir / "coffee.jpg").read_bytes()
    (folder / "3_truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "4_random.png").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    png = cv2.imencode(".png", cv2.imread(str(photo_dir / "rocket.jpg")))[1].tobytes()
    (folder / "5_truncated.png").write_bytes(png[: len(png) // 3])
    (folder / "6_text.jpg").write_text("hello, I am not a picture")
    shutil.copy(photo_dir / "coffee.jpg", folder / "7_good.jpg")
    return folder


def test_bad_images_beside_good_ones(artifacts, bad_images, capsys):
    code, records, err = run_json(capsys, "--model", str(artifacts["onnx"]), "--image", str(bad_images),
                                  str(bad_images / "missing.jpg"))
    assert code == 1
    assert [Path(r["source"]).name for r in records] == ["1_good.jpg", "7_good.jpg"]
    lines = err.splitlines()
    assert len(lines) == 6 and "Traceback" not in err
    for name, reason in [("2_empty", "empty file"), ("3_truncated.jpg", "truncated JPEG"),
                         ("4_random", "not an image"), ("5_truncated.png", "truncated PNG"),
                         ("6_text", "not an image"), ("missing.jpg", "no such file")]:
        assert any(name in line and reason in line for line in lines), (name, lines)


@pytest.mark.parametrize("case", ["missing model", "not a model", "unknown suffix", "topk 0", "labels length"])
def test_unusable_model_or_usage_exits_2_with_one_line(case, artifacts, photo_dir, tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf" * 10)
    short = tmp_path / "short.txt"
    short.write_text("just\ntwo\n")
    argv = {
        "missing model": ["--model", str(tmp_path / "nope.onnx")],
        "not a model": ["--model", str(junk)],
        "unknown suffix": ["--model", str(short)],
        "topk 0": ["--model", str(artifacts["onnx"]), "--topk", "0"],
        "labels length": ["--model", str(artifacts["onnx"]), "--labels", str(short)],
    }[case]
    code = main(argv + ["--image", str(photo_dir / "chelsea.jpg")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err


def test_subprocess_onnx_run_never_imports_torch(artifacts, photo_dir):
    script = ("import sys; from edge.cli import main; code = main(sys.argv[1:]); "
              "heavy = sorted(m for m in ('torch', 'torchvision', 'export') if m in sys.modules); "
              "print('IMPORTED', heavy, file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, "--model", str(artifacts["onnx"]), "--image",
                             str(photo_dir / "rocket.jpg"), "--json"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stderr
    assert json.loads(result.stdout)["label"] == "rocket"


def test_console_script_exit_code_for_a_partly_bad_run(artifacts, photo_dir, tmp_path):
    exe = shutil.which("edge-classify")
    command = [exe] if exe else [sys.executable, "-m", "edge.cli"]
    result = subprocess.run(command + ["--model", str(artifacts["onnx"]), "--image", str(photo_dir / "coffee.jpg"),
                                       str(tmp_path / "gone.jpg")], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{photo_dir / 'coffee.jpg'}: coffee (")
    assert result.stderr.strip() == f"edge-classify: {tmp_path / 'gone.jpg'}: no such file"
