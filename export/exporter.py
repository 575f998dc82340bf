"""Write one self-describing artifact (``.onnx`` or ``.ts``) from an eager torchvision model.

The suffix of ``out`` picks the format from ``FORMATS``; every file is written to a temporary name
beside its destination and renamed into place, so a failure never leaves half a model behind::

    model = build_model("mobilenet_v2", num_classes=2).eval()
    export_artifact(model, Path("ants_bees.onnx"), arch="mobilenet_v2", labels=["ant", "bee"],
                    precision="fp16")
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Mapping, Sequence

import torch
from torch import nn

from edge.contract import (IMAGENET_MEAN, IMAGENET_STD, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME, TORCHSCRIPT_METADATA_FILE,
                           INPUT_UINT8, Key)

from .errors import ExportError
from .metadata import artifact_metadata
from .outputs import remove_stale_temporaries, temporary_name
from .wrap import DeviceInput

log = logging.getLogger(__name__)

DEFAULT_OPSET = 13  # the highest that JetPack 4.6 (TensorRT 8.2, onnxruntime 1.11) loads
INPUT_NAME, OUTPUT_NAME = ONNX_INPUT_NAME, ONNX_OUTPUT_NAME
__all__ = ["ExportError", "FORMATS", "atomic_path", "export_artifact", "format_for", "write_artifact"]


@dataclass(frozen=True)
class Format:
    """One artifact format: its name, its file suffix and the function that writes it."""

    name: str
    suffix: str
    write: Callable[..., None]


def format_for(path: Path) -> "Format":
    """The format an output path asks for, by its suffix; a clear error for any other suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if fmt.suffix == suffix:
            return fmt
    known = ", ".join(f.suffix for f in FORMATS)
    raise ExportError(f"{path}: unknown output suffix {suffix or '(none)'!r}; use one of {known}")


def export_artifact(
    model: nn.Module,
    out: Path,
    *,
    arch: str,
    labels: Sequence[str],
    precision: str = "fp32",
    input_kind: str = INPUT_UINT8,
    input_side: int = 224,
    resize_side: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    source: str = "none",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``model`` (an eager FP32 classifier) to ``out``; returns ``out``.

    ``model`` is not modified: the FP16 variant is made from a copy.
    """
    out = Path(out)
    fmt = format_for(out)
    meta = artifact_metadata(arch=arch, labels=labels, input_side=input_side, resize_side=resize_side,
                             precision=precision, input_kind=input_kind, source=source, mean=mean, std=std)
    with atomic_path(out) as tmp:
        write_artifact(model, tmp, meta, fmt=fmt, opset=opset)
    return out


def write_artifact(model: nn.Module, path: Path, meta: Mapping[str, str], *, fmt: Format,
                   opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` behind the input contract to ``path`` (not atomically: see ``atomic_path``)."""
    mean, std = json.loads(meta[Key.MEAN]), json.loads(meta[Key.STD])
    wrapped = _wrap(model, meta, mean, std)
    fmt.write(wrapped, example_input(meta[Key.INPUT], int(meta[Key.INPUT_SIDE])), path, meta, opset=opset)


def example_input(input_kind: str, side: int, *, batch: int = 1) -> torch.Tensor:
    """A tensor of the artifact's input type (uint8 NHWC pixels, or float32 NCHW) for every precision."""
    if input_kind == INPUT_UINT8:
        return torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, side, side, dtype=torch.float32)


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest``, renamed onto ``dest`` if the block succeeds, removed if not.

    Its name carries this process's id, so the next write of ``dest`` removes it if ``kill -9`` stops this one
    (``export.outputs``)."""
    dest = Path(dest)
    remove_stale_temporaries(dest)
    prefix, suffix = temporary_name(dest)
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dest.parent)
    except OSError as exc:
        raise ExportError(f"cannot write {dest}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the artifact should read like any new file
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def quiet_torch_export() -> Iterator[None]:
    """Keep torch's deprecation notices (jit.trace, the legacy ONNX exporter) and tracer chatter out of the user's face."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _wrap(model: nn.Module, meta: Mapping[str, str], mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    import copy

    half = meta[Key.PRECISION] == "fp16"
    base = copy.deepcopy(model).float().eval() if half else model.eval()
    return DeviceInput(base, mean=mean, std=std, input_kind=meta[Key.INPUT], half=half).eval()


def _write_onnx(wrapped: nn.Module, example: torch.Tensor, path: Path, meta: Mapping[str, str], *, opset: int) -> None:
    import onnx

    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        do_constant_folding=True,
    )
    with quiet_torch_export(), torch.no_grad():
        if opset < 18:
            # The new (dynamo) exporter cannot go below opset 18; the legacy one still can.
            torch.onnx.export(wrapped, (example,), str(path), dynamo=False, **kwargs)
        else:
            torch.onnx.export(wrapped, (example,), str(path), dynamo=True, external_data=False, **kwargs)
    proto = onnx.load(str(path))
    # Older runtimes (onnxruntime 1.11, TensorRT 8.2) reject IR versions newer than the opset needs.
    proto.ir_version = min(proto.ir_version, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", opset)]))
    onnx.helper.set_model_props(proto, dict(meta))
    onnx.save(proto, str(path))


def _write_torchscript(wrapped: nn.Module, example: torch.Tensor, path: Path, meta: Mapping[str, str],
                       *, opset: int) -> None:
    del opset  # ONNX only
    with quiet_torch_export(), torch.no_grad():
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        extra: Dict[str, str] = {TORCHSCRIPT_METADATA_FILE: json.dumps(dict(meta))}
        torch.jit.save(traced, str(path), _extra_files=extra)


FORMATS = (
    Format("ONNX", ".onnx", _write_onnx),
    Format("TorchScript", ".ts", _write_torchscript),
)
