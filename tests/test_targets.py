"""edge-export --target: jetson-inference, DeepStream and TensorRT files, each fed as its runtime feeds it.

The runtimes themselves are not here (no GPU, no JetPack): each test rebuilds what the runtime hands
the network from its documented behaviour, independently of export/, and holds the file's answer
against the eager model on real photos.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_checks import usage_error
from conftest import PHOTO_ARCH

from export.cli import export_main
from export.load import LoadedModel
from export.target_files import write_side_files, write_target_onnx
from export.target_verify import runtime_device_path, verify_runtime
from export.targets import TARGETS, TargetError, resolve_outputs
from export.verify import eager_reference, verification_frames

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def loaded_photo_model(photo_model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> LoadedModel:
    model, labels = photo_model
    return LoadedModel(model, PHOTO_ARCH, list(labels), 224, 256, "test", tuple(mean), tuple(std))


def eager_probabilities(model, pixels_nhwc: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    x = (pixels_nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x))), 1).numpy()


def jetson_nearest(rgb: np.ndarray, side: int = 224) -> np.ndarray:
    """tensorConvert.cu: dx = (int)((float)x * (float)in_w / (float)out_w), the whole frame, no crop."""
    height, width = rgb.shape[:2]
    rows = [int(np.float32(y) * np.float32(height / side)) for y in range(side)]
    cols = [int(np.float32(x) * np.float32(width / side)) for x in range(side)]
    return rgb[np.ix_(rows, cols)]


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: batch[i:i + 1]})[0] for i in range(len(batch))])


def uint8_anywhere(proto) -> list:
    """Every place a UINT8 type appears in the graph: inputs, outputs, values, weights, casts, constants."""
    u8 = onnx.TensorProto.UINT8
    graph = proto.graph
    found = [v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)
             if v.type.tensor_type.elem_type == u8]
    found += [t.name for t in graph.initializer if t.data_type == u8]
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == u8:
                found.append(node.name)
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == u8:
                found.append(node.name)
    return found


@pytest.fixture(scope="module")
def weights_and_labels(tmp_path_factory, photo_model):
    model, labels = photo_model
    folder = tmp_path_factory.mktemp("target-inputs")
    torch.save(model.state_dict(), folder / "photos.pth")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder / "photos.pth", folder / "labels.txt"


@pytest.fixture(scope="module")
def verification_photos():
    """``(name, BGR frame)``: the photos edge-export verifies on by default."""
    return verification_frames(None)


def runtime_check(path, target_name, loaded, named_frames, tolerance=0.001):
    frames = [frame for _, frame in named_frames]
    device = runtime_device_path(path, TARGETS[target_name], loaded)
    return verify_runtime(frames, eager_reference(loaded, frames), loaded, device, tolerance=tolerance)


@pytest.fixture(scope="module")
def jetson_file(tmp_path_factory, photo_model) -> Path:
    """The photo model as a jetson-inference file (written once: several tests feed it)."""
    path = tmp_path_factory.mktemp("jetson") / "m.jetson.onnx"
    write_target_onnx(loaded_photo_model(photo_model), path, TARGETS["jetson-inference"], {"target": "jetson"})
    return path


def test_outputs_pair_with_targets_by_name_order_or_a_shared_stem():
    by_name = resolve_outputs([Path("a.onnx"), Path("b.jetson.onnx"), Path("c.deepstream.onnx"),
                               Path("d.tensorrt.onnx"), Path("e.ts")], [])
    assert [t.name for _, t in by_name] == ["onnxruntime", "jetson-inference", "deepstream", "tensorrt",
                                            "torchscript"]
    in_order = resolve_outputs([Path("x.onnx"), Path("y.onnx")], ["tensorrt", "jetson-inference"])
    assert [(str(p), t.name) for p, t in in_order] == [("x.onnx", "tensorrt"), ("y.onnx", "jetson-inference")]
    shared = resolve_outputs([Path("out/m.onnx")], ["all"])
    assert [str(p) for p, _ in shared] == ["out/m.onnx", "out/m.jetson.onnx", "out/m.deepstream.onnx",
                                           "out/m.tensorrt.onnx"]
    assert [str(p) for p, _ in resolve_outputs([Path("m.jetson.onnx")], ["deepstream", "tensorrt"])] == [
        "m.deepstream.onnx", "m.tensorrt.onnx"]


@pytest.mark.parametrize("outs, names, message", [
    (["a.onnx", "b.onnx", "c.onnx"], ["tensorrt", "deepstream"], "2 targets but 3 --out files"),
    (["m.ts"], ["jetson-inference"], "writes a .onnx file"),
    (["m.engine"], [], "unknown output suffix"),
    (["m.onnx", "m.onnx"], [], "the same file"),
])
def test_impossible_target_combinations_are_refused(outs, names, message):
    with pytest.raises(TargetError, match=message):
        resolve_outputs([Path(o) for o in outs], names)


def test_runtime_resizing_matches_each_runtimes_own_rule(photos):
    from export.target_verify import stretch_bilinear, stretch_nearest

    for name, rgb in photos.items():
        assert np.array_equal(stretch_nearest(rgb, 256, 224), jetson_nearest(rgb)), name
        diff = np.abs(stretch_bilinear(rgb, 256, 224).astype(int)
                      - cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_LINEAR).astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.25, name  # OpenCV rounds its fixed-point weights


def test_jetson_inference_file_takes_what_imagenet_feeds(jetson_file, photo_model, photos, verification_photos):
    loaded = loaded_photo_model(photo_model)
    path = jetson_file
    proto = onnx.load(str(path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert (proto.graph.input[0].name, proto.graph.output[0].name, dims) == ("input_0", "output_0", [1, 3, 224, 224])
    assert {op.domain: op.version for op in proto.opset_import}[""] == 13 and not uint8_anywhere(proto)
    # What imageNet feeds: the stretched frame, scaled to [0, 1], normalised with ImageNet's statistics.
    names = [name for name, _ in verification_photos]
    pixels = np.stack([jetson_nearest(photos[name]) for name in names])
    feed = ((pixels.transpose(0, 3, 1, 2) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    got = run_onnx(path, feed)
    expected = eager_probabilities(photo_model[0], pixels)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # a Softmax: imagenet's threshold is a probability
    np.testing.assert_allclose(got, expected, atol=1e-4)
    check = runtime_check(path, "jetson-inference", loaded, verification_photos)
    assert check.ok and check.images == len(names) and check.max_prob_diff < 1e-4
    # Against the PyTorch pipeline (class i is photo i), ties between close classes forgiven:
    assert int(np.sum(got.argmax(1) == np.arange(len(names)))) <= check.pytorch_agree <= len(names)


def test_jetson_inference_file_folds_in_a_models_own_statistics(tmp_path, photo_model, photos):
    """imageNet always normalises with ImageNet's mean/std; a model trained with others is corrected in-graph."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    loaded = loaded_photo_model(photo_model, mean, std)
    path = tmp_path / "own.jetson.onnx"
    write_target_onnx(loaded, path, TARGETS["jetson-inference"], {})
    pixels = np.stack([jetson_nearest(photos[name]) for name in ("chelsea", "rocket")])
    feed = ((pixels.transpose(0, 3, 1, 2) / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    expected = eager_probabilities(photo_model[0], pixels, np.reshape(mean, (1, 3, 1, 1)), np.reshape(std, (1, 3, 1, 1)))
    np.testing.assert_allclose(run_onnx(path, feed), expected, atol=1e-4)
    assert not np.allclose(expected, eager_probabilities(photo_model[0], pixels), atol=1e-2)  # the stats matter


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_deepstream_file_takes_0_255_pixels_and_config_names_files_that_exist(tmp_path, photo_model, photos,
                                                                               verification_photos):
    loaded = loaded_photo_model(photo_model)
    target = TARGETS["deepstream"]
    path = tmp_path / "m.deepstream.onnx"
    write_target_onnx(loaded, path, target, {"target": "deepstream"})
    written = write_side_files(path, target, loaded.labels, "fp16", 224)
    config_path = tmp_path / "m.deepstream.nvinfer.txt"
    assert sorted(written) == sorted([config_path, tmp_path / "m.deepstream.labels.txt"])
    # A GLib key file: groups, key=value, ';'-separated lists, '#' comments.
    config = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    config.optionxform = str  # keys are case-sensitive
    config.read_string(config_path.read_text())
    props = config["property"]
    assert (props["network-type"], props["net-scale-factor"], props["offsets"], props["model-color-format"],
            props["network-mode"], props["batch-size"]) == ("1", "1", "0;0;0", "0", "2", "1")
    assert 0.0 <= float(props["classifier-threshold"]) < 1.0
    assert props["output-blob-names"] == onnx.load(str(path)).graph.output[0].name
    for key in ("onnx-file", "labelfile-path"):  # nvinfer resolves them relative to the config file
        assert (config_path.parent / props[key]).is_file(), key
    label_lines = (tmp_path / props["labelfile-path"]).read_text().splitlines()
    assert label_lines == [";".join(loaded.labels)]  # one line per output layer, classes split by ';'
    # nvinfer: y = net-scale-factor * (x - offsets) = the bilinear-scaled pixels themselves.
    names = [name for name, _ in verification_photos]
    pixels = np.stack([cv2.resize(photos[name], (224, 224), interpolation=cv2.INTER_LINEAR) for name in names])
    got = onnxruntime.InferenceSession(str(path)).run(
        None, {"input": pixels.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    np.testing.assert_allclose(got, eager_probabilities(photo_model[0], pixels), atol=1e-4)
    assert runtime_check(path, "deepstream", loaded, verification_photos).ok


def refused_by_edge_classify(path: Path, image: Path, capsys) -> str:
    """edge-classify's one line for a file another runtime runs (its softmax and its resize are not ours)."""
    from edge.cli import main as classify_main

    assert classify_main(["--model", str(path), "--image", str(image)]) == 2
    printed = capsys.readouterr()
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in printed.err and printed.out == "", printed
    return lines[0]


def test_edge_classify_refuses_the_files_of_other_runtimes_naming_the_runtime(tmp_path, jetson_file, photo_model,
                                                                              photo_dir, capsys):
    """A "3" at 99% read as "class 1 (20.1%)": DeepStream's file takes 0..255 floats and ends in a Softmax."""
    from edge import contract

    line = refused_by_edge_classify(jetson_file, photo_dir, capsys)
    assert "for jetson-inference" in line and "for edge-classify" in line, line
    deepstream = tmp_path / "m.deepstream.onnx"
    write_target_onnx(loaded_photo_model(photo_model), deepstream, TARGETS["deepstream"], {})  # no provenance given
    assert {p.key: p.value for p in onnx.load(str(deepstream)).metadata_props}["target"] == "deepstream"
    line = refused_by_edge_classify(deepstream, photo_dir, capsys)
    assert "for DeepStream (nvinfer)" in line and "--target onnxruntime" in line, line
    assert sorted(contract.RUNTIMES_ELSEWHERE) == sorted(t.name for t in TARGETS.values() if not t.self_describing)


@pytest.mark.slow  # a whole CLI export and run: seconds on 2 cores
def test_tensorrt_target_has_no_uint8_and_edge_classify_runs_it(tmp_path, weights_and_labels, photo_model,
                                                                photo_dir, capsys):
    from edge.cli import main as classify_main

    weights, labels_file = weights_and_labels
    out = tmp_path / "m.onnx"
    code = export_main(["--arch", PHOTO_ARCH, "--weights", str(weights), "--labels", str(labels_file),
                        "--target", "tensorrt", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    proto = onnx.load(str(out))
    assert {op.domain: op.version for op in proto.opset_import}[""] == 13
    assert uint8_anywhere(proto) == []
    graph_input = proto.graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["input"], meta["layout"], json.loads(meta["labels"])) == ("float", "NCHW", photo_model[1])
    trtexec = next(line.strip() for line in printed.splitlines() if line.strip().startswith("trtexec "))
    flags = dict(arg.split("=", 1) for arg in shlex.split(trtexec)[1:] if "=" in arg)
    assert Path(flags["--onnx"]) == out and "--fp16" in trtexec
    assert [flags[f"--{k}Shapes"] for k in ("min", "opt", "max")] == [
        f"{graph_input.name}:{n}x3x224x224" for n in (1, 4, 8)]  # a batch profile: several sources, one engine
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # the graph's batch axis is dynamic
    code = classify_main(["--model", str(out), "--image", str(photo_dir), "--json"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(records) == len(photo_model[1])
    assert [r["label"] for r in records] == [Path(r["source"]).stem for r in records]


def test_labels_a_runtime_cannot_hold_fail_before_any_export(tmp_path, weights_and_labels, photo_model, capsys):
    weights, _ = weights_and_labels
    labels = tmp_path / "semicolons.txt"
    labels.write_text("\n".join(f"{name};x" for name in photo_model[1]) + "\n")
    before = set(tmp_path.iterdir())
    code = export_main(["--arch", PHOTO_ARCH, "--weights", str(weights), "--labels", str(labels),
                        "--target", "deepstream", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    usage_error(code, err, "edge-export", "';'")
    assert set(tmp_path.iterdir()) == before


def test_a_side_file_never_overwrites_an_input(tmp_path, weights_and_labels, capsys):
    weights, labels_file = weights_and_labels
    labels = tmp_path / "m.jetson.labels.txt"  # exactly where the jetson-inference labels would go
    labels.write_bytes(labels_file.read_bytes())
    code = export_main(["--arch", PHOTO_ARCH, "--weights", str(weights), "--labels", str(labels),
                        "--target", "jetson-inference", "--out", str(tmp_path / "m.jetson.onnx")])
    err = capsys.readouterr().err
    usage_error(code, err, "edge-export", "would overwrite the input")
    assert labels.read_bytes() == labels_file.read_bytes() and sorted(tmp_path.iterdir()) == [labels]


@pytest.mark.slow  # a whole CLI export: seconds on 2 cores
def test_a_target_that_disagrees_leaves_no_model_and_no_side_files(tmp_path, weights_and_labels, monkeypatch,
                                                                   capsys):
    import export.target_verify

    real_feed = export.target_verify.runtime_feed
    monkeypatch.setattr(export.target_verify, "runtime_feed", lambda pixels, feed: real_feed(pixels, feed) * 1.5)
    weights, labels_file = weights_and_labels
    code = export_main(["--arch", PHOTO_ARCH, "--weights", str(weights), "--labels", str(labels_file),
                        "--target", "jetson-inference", "--out", str(tmp_path / "m.onnx")])
    printed = capsys.readouterr()
    assert code == 1 and "FAILED" in printed.out and "disagrees" in printed.err
    assert "imagenet " not in printed.out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_one_run_writes_every_target_verified_with_commands_that_name_its_files(
        tmp_path, weights_and_labels, photo_model, photo_dir, capsys):
    from edge.cli import main as classify_main

    weights, labels_file = weights_and_labels
    out = tmp_path / "m.onnx"
    code = export_main(["--arch", PHOTO_ARCH, "--weights", str(weights), "--labels", str(labels_file),
                        "--target", "all", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = {line.split()[1]: line.split() for line in printed.splitlines() if line.startswith(str(tmp_path))}
    assert sorted(rows) == ["deepstream", "jetson-inference", "onnxruntime", "tensorrt"]
    assert all(row[-1] == "ok" for row in rows.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "m.onnx", "m.jetson.onnx", "m.jetson.labels.txt", "m.deepstream.onnx", "m.deepstream.labels.txt",
        "m.deepstream.nvinfer.txt", "m.tensorrt.onnx"])
    commands = [line.strip() for line in printed.splitlines() if line.startswith("  ")]
    imagenet = dict(arg.split("=", 1) for arg in shlex.split(next(c for c in commands if c.startswith("imagenet ")))
                    if arg.startswith("--"))
    jetson = onnx.load(imagenet["--model"]).graph
    assert (imagenet["--input_blob"], imagenet["--output_blob"]) == (jetson.input[0].name, jetson.output[0].name)
    assert Path(imagenet["--labels"]).read_text().splitlines() == photo_model[1]
    gst = next(c for c in commands if c.startswith("gst-launch-1.0 "))
    assert Path(re.search(r"config-file-path=(\S+)", gst).group(1)) == tmp_path / "m.deepstream.nvinfer.txt"
    for model in (out, tmp_path / "m.tensorrt.onnx"):
        assert f"edge-classify --model {model}" in printed
        code = classify_main(["--model", str(model), "--image", str(photo_dir), "--json"])
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert code == 0 and [r["label"] for r in records] == [Path(r["source"]).stem for r in records]
    for model, runtime in ((tmp_path / "m.jetson.onnx", "jetson-inference"),
                           (tmp_path / "m.deepstream.onnx", "DeepStream")):
        assert runtime in refused_by_edge_classify(model, photo_dir, capsys)


def test_a_runtime_path_that_feeds_the_file_wrongly_is_caught(photo_model, jetson_file, verification_photos):
    """The runtime's path is an export.verify.DevicePath: feeding raw 0..255 pixels to the
    jetson-inference file (which wants them normalised) must fail the check, not pass it."""
    import dataclasses

    loaded = loaded_photo_model(photo_model)
    frames = [frame for _, frame in verification_photos]
    device = runtime_device_path(jetson_file, TARGETS["jetson-inference"], loaded)
    # The right feed passes the same check: test_jetson_inference_file_takes_what_imagenet_feeds (runtime_check).
    raw = dataclasses.replace(device, to_input=lambda crop: crop.transpose(2, 0, 1).astype(np.float32))
    assert not verify_runtime(frames, eager_reference(loaded, frames), loaded, raw, tolerance=0.001).ok
