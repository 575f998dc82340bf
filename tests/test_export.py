"""edge-export: every architecture, both formats and precisions, held against the eager model on real photos."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from cli_checks import usage_error
from conftest import PHOTO_ARCH
from reference import SEED_MEAN, SEED_STD, seed_crop
import torch

from export.cli import export_main
from export.exporter import export_artifact
from export.zoo import ARCHITECTURES, build_model, get_arch

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
FAST_ARCHITECTURE = "mobilenet_v2"  # the default model's; the others take seconds each on 2 cores: the full suite


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def run_torchscript(path: Path, batch: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(batch)).numpy()


def cropped_pixels(photos, side=224, resize=256) -> np.ndarray:
    """What a device feeds the artifact: torchvision's Resize + CenterCrop, as uint8 NHWC."""
    return np.stack([seed_crop(p, resize, side) for p in photos])


def eager_logits(model, pixels: np.ndarray) -> np.ndarray:
    mean = torch.tensor(SEED_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SEED_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, photo_model) -> Path:
    model, _ = photo_model
    path = tmp_path_factory.mktemp("weights") / "photos.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory, photo_model) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(photo_model[1]) + "\n")
    return path


@pytest.mark.parametrize("arch", [a if a == FAST_ARCHITECTURE else pytest.param(a, marks=pytest.mark.slow)
                                  for a in sorted(ARCHITECTURES)])
def test_every_architecture_exports_onnx_fp16_with_its_input_size(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3).eval()
    side = get_arch(arch).input_side
    out = export_artifact(model, tmp_path / f"{arch}.onnx", arch=arch, labels=["a", "b", "c"], precision="fp16",
                          input_side=side, resize_side=get_arch(arch).resize_side)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [side, side, 3]
    assert outp.type == "tensor(float)"
    logits = session.run(None, {inp.name: np.zeros((2, side, side, 3), np.uint8)})[0]
    assert logits.shape == (2, 3) and logits.dtype == np.float32
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["arch"] == arch and meta["input_side"] == str(side) and meta["precision"] == "fp16"


@pytest.mark.parametrize("precision", [pytest.param("fp32", marks=pytest.mark.slow), "fp16"])
def test_cli_artifacts_agree_with_the_eager_model_on_real_photos(precision, tmp_path, photos, photo_model,
                                                                  weights_file, labels_file, capsys):
    model, labels = photo_model
    outs = [tmp_path / "m.onnx", tmp_path / "m.ts"]
    if precision == "fp32":  # the labels as Windows Notepad saves "UTF-8": a byte-order mark first
        labels_file = tmp_path / "labels.txt"
        labels_file.write_text("\n".join(labels) + "\n", encoding="utf-8-sig")
    code = export_main(["--arch", PHOTO_ARCH, "--weights", str(weights_file), "--labels", str(labels_file),
                        "--precision", precision, "--out", str(outs[0]), "--out", str(outs[1])])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    baked = json.loads({p.key: p.value for p in onnx.load(str(outs[0])).metadata_props}["labels"])
    assert baked == labels  # no "\ufeff" on the first
    assert printed.out.count(" ok") == 2 and "6/6" in printed.out  # the built-in photos
    assert "Warning" not in printed.err and "deprecated" not in printed.err
    pixels = cropped_pixels([photos[n] for n in labels])
    reference = eager_logits(model, pixels)
    assert list(reference.argmax(1)) == list(range(len(labels)))  # the model really tells the photos apart
    tolerance = {"fp32": 1e-3, "fp16": 0.05}[precision] * np.abs(reference).max()
    for got in (run_onnx(outs[0], pixels), run_torchscript(outs[1], pixels)):
        assert got.dtype == np.float32
        assert list(got.argmax(1)) == list(reference.argmax(1))
        assert np.abs(got - reference).max() < tolerance
    if precision == "fp16":
        assert outs[0].stat().st_size < 0.6 * weights_file.stat().st_size  # weights really are half precision


def test_float_input_artifact_takes_normalised_nchw(tmp_path, photos, photo_model):
    model, labels = photo_model
    out = export_artifact(model, tmp_path / "f.onnx", arch=PHOTO_ARCH, labels=labels, input_kind="float")
    pixels = cropped_pixels([photos[n] for n in labels])
    mean = np.array(SEED_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.array(SEED_STD, np.float32).reshape(1, 3, 1, 1)
    normalised = ((pixels.transpose(0, 3, 1, 2) / np.float32(255) - mean) / std).astype(np.float32)
    got = run_onnx(out, normalised)
    np.testing.assert_allclose(got, eager_logits(model, pixels), atol=1e-3 * np.abs(got).max())
    meta = onnxruntime.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert meta["input"] == "float" and meta["layout"] == "NCHW"


def test_metadata_round_trips_into_the_device_spec(tmp_path, photo_model):
    from edge.model.artifact import spec_from_metadata

    model, labels = photo_model
    onnx_path = export_artifact(model, tmp_path / "m.onnx", arch=PHOTO_ARCH, labels=labels, precision="fp16",
                                source="file:photos.pth")
    ts_path = export_artifact(model, tmp_path / "m.ts", arch=PHOTO_ARCH, labels=labels, precision="fp16",
                              source="file:photos.pth")
    onnx_meta = dict(onnxruntime.InferenceSession(str(onnx_path)).get_modelmeta().custom_metadata_map)
    extra = {"edge_classifier.json": ""}
    torch.jit.load(str(ts_path), _extra_files=extra)
    ts_meta = json.loads(extra["edge_classifier.json"])
    assert onnx_meta == ts_meta
    spec = spec_from_metadata(onnx_meta, input_shape=["batch", 224, 224, 3], input_dtype="uint8",
                              num_classes=len(labels))
    assert spec.labels == tuple(labels)
    assert (spec.input_side, spec.resize_side, spec.precision, spec.input_kind) == (224, 256, "fp16", "uint8")
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406)) and spec.std == pytest.approx((0.229, 0.224, 0.225))
    assert onnx_meta["arch"] == PHOTO_ARCH and onnx_meta["exporter"].startswith("edge-classifier ")
    assert onnx_meta["source"] == "file:photos.pth"


def test_onnx_loads_in_old_runtimes_by_default(tmp_path, photo_model):
    import onnx

    model, labels = photo_model
    proto = onnx.load(str(export_artifact(model, tmp_path / "m.onnx", arch=PHOTO_ARCH, labels=labels,
                                          precision="fp16")))
    assert {op.domain: op.version for op in proto.opset_import}[""] == 13
    assert proto.ir_version <= 8  # onnxruntime 1.11 / TensorRT 8.2 (JetPack 4.6)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not list(tmp_path.glob("*.data"))  # one file, no external weights


@pytest.mark.slow
def test_partial_state_dict_loads_with_a_report(tmp_path, caplog):
    torch.manual_seed(1)
    source = build_model("resnet18", num_classes=1000)
    weights = tmp_path / "r18.pth"
    torch.save(source.state_dict(), weights)
    labels = tmp_path / "two.txt"
    labels.write_text("ant\nbee\n")
    with caplog.at_level("WARNING"):
        code = export_main(["--arch", "resnet18", "--weights", str(weights), "--labels", str(labels),
                            "--precision", "fp32", "--out", str(tmp_path / "ab.onnx")])
    assert code == 0
    assert "skipped 2 key(s)" in caplog.text and "fc.weight" in caplog.text
    from export.load import load_model

    loaded = load_model("resnet18", str(weights), labels=["ant", "bee"])
    assert torch.equal(loaded.model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)  # the backbone loaded
    meta = onnxruntime.InferenceSession(str(tmp_path / "ab.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == ["ant", "bee"]


@pytest.mark.slow
def test_pretrained_from_torchvisions_cache_without_network(tmp_path, monkeypatch, photo_model, capsys):
    """The real pretrained path: torchvision finds the file in its cache, as after a download."""
    import torchvision.models

    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(2)
    torch.save(build_model("resnet18", 1000).state_dict(), cache / Path(weights.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code = export_main(["--arch", "resnet18", "--weights", "pretrained", "--precision", "fp32",
                        "--out", str(tmp_path / "r.onnx")])
    assert code == 0, capsys.readouterr().err
    meta = onnxruntime.InferenceSession(str(tmp_path / "r.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"])[:2] == ["tench", "goldfish"]
    assert meta["source"] == "pretrained:ResNet18_Weights.IMAGENET1K_V1"


def test_pretrained_offline_says_how_to_pass_a_local_file(tmp_path, monkeypatch, capsys):
    import torchvision.models._api as api

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    code = export_main(["--arch", "mobilenet_v2", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    usage_error(code, err, "edge-export", "--weights PATH", "mobilenet_v2-7ebf99e0.pth")
    assert not list(tmp_path.glob("*.onnx"))


def _bad(tmp_path, case):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a zip or a pickle")
    not_state = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_state)
    other_arch = tmp_path / "alexnet.pth"
    if case == "other architecture":  # only there: alexnet's 61 M weights take seconds to build and save
        torch.save(build_model("alexnet", 2).state_dict(), other_arch)
    return {
        "unknown arch": (["--arch", "resnet9000", "--weights", "none"], "unknown architecture"),
        "missing weights": (["--weights", str(tmp_path / "nope.pth")], "weights file not found"),
        "not a torch file": (["--weights", str(junk)], "not a PyTorch weights file"),
        "not a state dict": (["--weights", str(not_state)], "no state dict"),
        "other architecture": (["--weights", str(other_arch)], "is it weights for another architecture?"),
        "labels of the wrong length": (["--weights", "none", "--num-classes", "5", "--labels",
                                        str(tmp_path / "three.txt")], "3 labels but the model has 5"),
        "unknown suffix": (["--weights", "none", "--out", str(tmp_path / "m.engine")], "unknown output suffix"),
    }


@pytest.mark.parametrize("case", ["unknown arch", "missing weights", "not a torch file", "not a state dict",
                                  "other architecture", "labels of the wrong length", "unknown suffix"])
def test_bad_input_gives_one_line_and_leaves_no_file(case, tmp_path, capsys):
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    argv, message = _bad(tmp_path, case)[case]
    if "--out" not in argv:
        argv = argv + ["--out", str(tmp_path / "m.onnx")]
    before = set(tmp_path.rglob("*"))
    code = export_main(argv)
    err = capsys.readouterr().err
    usage_error(code, err, "edge-export", message)
    assert set(tmp_path.rglob("*")) == before


def test_unwritable_target_gives_one_line(tmp_path, capsys):
    """A path under a regular file cannot be created, whoever runs the export (CI runs as root)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = export_main(["--weights", "none", "--precision", "fp32", "--out", str(blocker / "m.onnx")])
    err = capsys.readouterr().err
    usage_error(code, err, "edge-export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_artifact_that_disagrees_is_not_kept(tmp_path, weights_file, labels_file, capsys):
    out = tmp_path / "m.onnx"
    code = export_main(["--arch", PHOTO_ARCH, "--weights", str(weights_file), "--labels", str(labels_file),
                        "--precision", "fp16", "--tolerance", "0",  # FP16 rounding now counts as disagreement
                        "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 1
    assert "disagrees with the eager model" in printed.err and "FAILED" in printed.out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_fp16_of_an_input_sensitive_model_passes_on_what_a_user_sees(tmp_path, photos, capsys):
    """mobilenet_v2 with batch-norm recalibrated on the photos and a scaled-up head: large, input-sensitive logits
    that FP16 moves by half a unit. The probabilities a user reads do not move, so the export is kept."""
    from conftest import fit_photo_model

    names = list(photos)
    model = fit_photo_model("mobilenet_v2", [photos[n] for n in names])
    weights, labels = tmp_path / "sensitive.pth", tmp_path / "labels.txt"
    torch.save(model.state_dict(), weights)
    labels.write_text("\n".join(names) + "\n")
    out = tmp_path / "m.ts"  # FP16 TorchScript: the file the logit criterion refused to write
    code = export_main(["--arch", "mobilenet_v2", "--weights", str(weights), "--labels", str(labels),
                        "--precision", "fp16", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert printed.out.count(" ok") == 1 and out.is_file()
    pixels = cropped_pixels([photos[n] for n in names])
    reference = eager_logits(model, pixels)
    assert np.abs(run_torchscript(out, pixels) - reference).max() > 0.05  # the logits did move


def test_verification_runs_the_device_path_and_measures_its_pixels(photo_onnx, photo_model):
    """Through edge's preprocessing the pixels are within a fraction of a grey level of torchvision's; a runtime
    that stretches the frame with nearest-neighbour (jetson-inference's way) plugs in and is seen to differ."""
    import cv2

    from export.load import LoadedModel
    from export.verify import DevicePath, builtin_frames, eager_reference, edge_device_path, verify_path

    model, labels = photo_model
    frames = [frame for _, frame in builtin_frames()]
    reference = eager_reference(LoadedModel(model, PHOTO_ARCH, labels, 224, 256, "test"), frames)
    ours = edge_device_path(photo_onnx)
    result = verify_path(frames, reference, ours, tolerance=1e-3)
    assert result.ok and result.top1_agree == len(frames) and result.mean_pixel_diff < 0.65
    stretched = DevicePath(crop=lambda f: cv2.resize(f, (224, 224), interpolation=cv2.INTER_NEAREST)[..., ::-1],
                           to_input=ours.to_input, run=ours.run, metadata=ours.metadata)
    other = verify_path(frames, reference, stretched, tolerance=1e-3)
    assert other.mean_pixel_diff > 10 * result.mean_pixel_diff
    assert other.max_prob_diff > result.max_prob_diff and other.artifact_prob_diff == result.artifact_prob_diff
