"""The files a runtime needs beside the model, the model graph of the non-edge targets, and how to run each.

jetson-inference and DeepStream take plain ONNX files with their own tensor names, a labels file in
their own format and (DeepStream) an ``nvinfer`` config; TensorRT takes the ONNX and a ``trtexec``
line. Every file is written atomically (temporary name, then rename)::

    write_target_onnx(loaded, Path("m.jetson.onnx"), TARGETS["jetson-inference"], provenance)
    files = write_side_files(Path("m.deepstream.onnx"), TARGETS["deepstream"], labels, "fp16")
    for line in run_commands(Path("m.deepstream.onnx"), TARGETS["deepstream"], 224, "fp16"):
        print(line)
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import torch

from edge.contract import Key

from .exporter import atomic_path, quiet_torch_export
from .load import LoadedModel
from .targets import FeedToModel, Target, TargetError, side_file

NVINFER_NETWORK_MODE = {"fp32": 0, "fp16": 2}  # nvinfer's network-mode: 0 FP32, 1 INT8, 2 FP16
NVINFER_BILINEAR = 1  # scaling-filter: NvBufSurfTransformInter_Bilinear (0 is nearest)


def write_target_onnx(loaded: LoadedModel, path: Path, target: Target, provenance: Mapping[str, str]) -> None:
    """The target's graph (``FeedToModel`` around the FP32 model) as ONNX at ``path`` (not atomically).

    ``provenance`` (exporter, source, target) goes into ``metadata_props``: runtimes ignore it, people can
    read it, and edge-classify refuses the file by its ``target`` (``edge.contract.RUNTIMES_ELSEWHERE``). The
    edge-classify keys are left out on purpose: this file does not follow that contract.
    """
    import onnx

    wrapped = FeedToModel(loaded.model.eval(), feed=target.feed(loaded.mean, loaded.std), mean=loaded.mean,
                          std=loaded.std, softmax=target.softmax).eval()
    example = torch.rand(1, 3, loaded.input_side, loaded.input_side)
    axes = {target.input_name: {0: "batch"}, target.output_name: {0: "batch"}} if target.dynamic_batch else None
    with quiet_torch_export(), torch.no_grad():
        torch.onnx.export(wrapped, (example,), str(path), input_names=[target.input_name],
                          output_names=[target.output_name], dynamic_axes=axes, opset_version=target.opset,
                          do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(path))
    # TensorRT 8.2 and onnxruntime 1.10 reject IR versions newer than the opset needs.
    proto.ir_version = min(proto.ir_version, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", target.opset)]))
    onnx.helper.set_model_props(proto, {**provenance, Key.TARGET: target.name})
    onnx.save(proto, str(path))


def side_file_paths(model_path: Path, target: Target) -> List[Path]:
    """Where ``target``'s side files for the model at ``model_path`` go (before anything is exported)."""
    endings = {"jetson-inference": (".labels.txt",), "deepstream": (".labels.txt", ".nvinfer.txt")}
    return [side_file(model_path, ending) for ending in endings.get(target.name, ())]


def refuse_overwriting_inputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """A TargetError if a file about to be written is one of the files the export reads."""
    existing = [Path(p) for p in inputs if Path(p).is_file()]
    for out in outputs:
        clash = [p for p in existing if Path(out).exists() and Path(out).samefile(p)]
        if clash:
            raise TargetError(f"{out} would overwrite the input {clash[0]}; choose another --out")


def side_file_texts(model_path: Path, target: Target, labels: Sequence[str], precision: str,
                    input_side: int) -> Dict[Path, str]:
    """The side files of ``target`` for the model at ``model_path``: path -> text."""
    if target.name == "jetson-inference":
        return {side_file(model_path, ".labels.txt"): jetson_labels(labels)}
    if target.name == "deepstream":
        labels_path, config_path = side_file_paths(model_path, target)
        config = nvinfer_config(model_path, labels_path, target, precision, input_side)
        return {labels_path: deepstream_labels(labels), config_path: config}
    return {}


def write_side_files(model_path: Path, target: Target, labels: Sequence[str], precision: str,
                     input_side: int) -> List[Path]:
    """Write ``target``'s side files beside ``model_path``, each atomically; returns their paths."""
    written = []
    for path, text in side_file_texts(model_path, target, labels, precision, input_side).items():
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def jetson_labels(labels: Sequence[str]) -> str:
    """One class per line, in output order: what imageNet::LoadClassInfo reads.

    jetson-inference takes a line that starts with a 9-character ``nXXXXXXXX`` synset and a space as
    "synset description"; a class name that looks like that would lose its first word, so refuse it.
    """
    for label in labels:
        if len(label) > 9 and label[0] == "n" and label[9] == " ":
            raise TargetError(f"label {label!r} would be read as a synset id by jetson-inference; rename it")
    return "".join(f"{label}\n" for label in _single_line(labels))


def deepstream_labels(labels: Sequence[str]) -> str:
    """nvinfer's classifier label file: one line per output layer, its classes separated by ``;``."""
    bad = [label for label in labels if ";" in label]
    if bad:
        raise TargetError(f"label {bad[0]!r} contains ';', which separates classes in DeepStream's label file")
    return ";".join(_single_line(labels)) + "\n"


def nvinfer_config(model_path: Path, labels_path: Path, target: Target, precision: str, input_side: int) -> str:
    """The ``[property]`` group of a Gst-nvinfer config (a GLib key file) for a primary classifier.

    Paths are relative to the config file, as nvinfer resolves them, so the three files move together.
    """
    properties = [
        ("gpu-id", "0", None),
        ("onnx-file", model_path.name, "built into a TensorRT engine on first start (minutes on a Nano)"),
        ("labelfile-path", labels_path.name, None),
        ("batch-size", "1", None),
        ("network-type", "1", "classifier"),
        ("process-mode", "1", "whole frames; 2 classifies a detector's objects (add operate-on-gie-id)"),
        ("model-color-format", "0", "RGB"),
        ("net-scale-factor", "1", "the network takes 0..255 pixels and normalises them itself"),
        ("offsets", "0;0;0", None),
        ("maintain-aspect-ratio", "0", "the frame is stretched to the network size, as verified"),
        ("scaling-filter", str(NVINFER_BILINEAR), "bilinear"),
        ("network-mode", str(NVINFER_NETWORK_MODE[precision]), "0 FP32, 2 FP16"),
        ("output-blob-names", target.output_name, "softmax probabilities"),
        ("classifier-threshold", "0", "attach the best label whatever its probability; raise it to drop weak ones"),
        ("gie-unique-id", "1", None),
    ]
    lines = [f"# nvinfer config for {model_path.name}: {input_side}x{input_side} RGB, written by edge-export",
             "[property]"]
    for key, value, why in properties:
        if why:
            lines.append(f"# {why}")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


# The engine's batch profile: 1 frame up to edge-classify's default --max-batch (several sources), tuned for 4.
TRT_OPT_BATCH = 4
TRT_MAX_BATCH = 8


def run_commands(model_path: Path, target: Target, input_side: int, precision: str) -> List[str]:
    """The command lines that run ``model_path`` in ``target``'s runtime (its files named as written)."""
    model = shlex.quote(str(model_path))
    if target.name == "jetson-inference":
        labels = shlex.quote(str(side_file(model_path, ".labels.txt")))
        return [f"imagenet --model={model} --labels={labels} --input_blob={target.input_name} "
                f"--output_blob={target.output_name} csi://0 display://0"]
    if target.name == "deepstream":
        config = shlex.quote(str(side_file(model_path, ".nvinfer.txt")))
        return [f"gst-launch-1.0 uridecodebin uri=file:///path/to/video.mp4 ! m.sink_0 nvstreammux name=m "
                f"batch-size=1 width=1280 height=720 ! nvinfer config-file-path={config} ! nvvideoconvert ! "
                "nvdsosd ! nveglglessink"]
    if target.name == "tensorrt":
        engine = shlex.quote(str(side_file(model_path, ".engine")))
        fp16 = " --fp16" if precision == "fp16" else ""
        shape = f"x3x{input_side}x{input_side}"
        return [f"trtexec --onnx={model} --saveEngine={engine} --minShapes={target.input_name}:1{shape} "
                f"--optShapes={target.input_name}:{TRT_OPT_BATCH}{shape} "
                f"--maxShapes={target.input_name}:{TRT_MAX_BATCH}{shape}{fp16}",
                f"edge-classify --model {model} --image photo.jpg"]
    return [f"edge-classify --model {model} --image photo.jpg"]


def _single_line(labels: Sequence[str]) -> List[str]:
    """Labels with no line breaks in them (a label file is line-based)."""
    return [" ".join(str(label).split()) for label in labels]
