"""What a model file may hold before anything in it runs: ONNX operator domains, TorchScript operators.

An ONNX file is data: a graph of operators that onnxruntime implements. Only a custom operator domain
would bring code of its own (a library registered with the session), so anything but ONNX's own
domains is refused from the file's ``opset_import`` list, read straight from its protobuf bytes::

    check_onnx_domains(Path("model.onnx"))          # BackendError: an operator domain not ONNX's own

A TorchScript file is code. ``torch.jit.load`` already runs a scripted ``__setstate__``, and the
load-time test inference runs ``forward``, which may call any operator torch has
(``torch.from_file(path, shared=True)`` writes files). So, before loading, no ``__setstate__`` in the
archive's code; after loading and before the first inference, every operator in ``forward``'s inlined
graph must be one that an exported torchvision classifier uses::

    check_torchscript_archive(Path("model.ts"))     # before torch.jit.load
    check_torchscript_operators(module, "model.ts") # after it, before the warm-up

This narrows what a .ts file from a stranger can do; it does not make one trustworthy.
"""

import logging
import re
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator, List, Optional, Set, Tuple

from edge.model.backends import BackendError

log = logging.getLogger(__name__)

ONNX_DOMAINS = frozenset(("", "ai.onnx", "ai.onnx.ml"))  # edge-export writes "" only (FP16 too)
_OPSET_IMPORT = 8  # ModelProto field number: repeated OperatorSetIdProto {1: domain, 2: version}

# Every operator in the inlined forward graph of what edge-export writes: each architecture of
# export/zoo.py, FP32 and FP16, uint8 and float input, traced (torch 2.x), preprocessing included;
# then the same operations as other torch versions or a scripted export spell them. No file,
# storage, process or print operator; no call that is not inlined (an interface, a Python function).
TORCHSCRIPT_OPERATORS = frozenset((
    # in our exports
    "aten::_convolution", "aten::adaptive_avg_pool2d", "aten::add", "aten::add_", "aten::avg_pool2d",
    "aten::batch_norm", "aten::cat", "aten::dropout", "aten::flatten", "aten::hardtanh_", "aten::linear",
    "aten::max_pool2d", "aten::mul", "aten::permute", "aten::relu_", "aten::select", "aten::slice", "aten::to",
    "aten::unsqueeze", "prim::Constant", "prim::GetAttr", "prim::ListConstruct",
    # the same work, spelled otherwise (scripted modules, older tracers, other heads)
    "aten::conv2d", "aten::relu", "aten::hardtanh", "aten::clamp", "aten::clamp_", "aten::sub", "aten::rsub",
    "aten::div", "aten::mean", "aten::view", "aten::reshape", "aten::contiguous", "aten::size", "aten::squeeze",
    "aten::adaptive_max_pool2d", "aten::max_pool2d_with_indices", "aten::feature_dropout", "aten::addmm",
    "aten::matmul", "aten::t", "aten::type_as", "aten::detach", "aten::Int", "aten::mul_", "aten::div_",
    "aten::sub_", "aten::hardswish", "aten::hardswish_", "aten::hardsigmoid", "aten::hardsigmoid_",
    "aten::sigmoid", "aten::silu", "aten::silu_", "aten::softmax",
    "prim::TupleConstruct", "prim::TupleUnpack", "prim::ListUnpack", "prim::NumToTensor",
))
MAX_CODE_BYTES = 64 << 20  # a classifier's code/ is a few hundred KB; more is a zip bomb, not a model
_SETSTATE = re.compile(rb"\b__setstate__\b")


# ---------------------------------------------------------------------------------------------- ONNX

def check_onnx_domains(path: Path) -> None:
    """BackendError naming the first operator domain in ``path``'s opset imports that is not ONNX's own.

    A file that is not readable protobuf is left to onnxruntime to refuse (its message says more).
    """
    try:
        with open(str(path), "rb") as handle:
            domains = list(_opset_domains(handle))
    except (OSError, ValueError, struct.error):
        return
    for domain in domains:
        if domain not in ONNX_DOMAINS:
            raise BackendError(f"{path} uses operators of the custom domain {domain!r}: only ONNX's own operators "
                               "are run (a custom domain would load code of its own)")


def _opset_domains(handle: BinaryIO) -> Iterator[str]:
    """The domain of each opset import of a ModelProto, skipping its other fields (the graph) unread."""
    while True:
        key = _varint(handle, allow_end=True)
        if key is None:
            return
        field, wire = key >> 3, key & 7
        if wire == 0:
            _varint(handle)
        elif wire == 1:
            handle.seek(8, 1)
        elif wire == 5:
            handle.seek(4, 1)
        elif wire == 2:
            length = _varint(handle)
            if field == _OPSET_IMPORT:
                yield _domain(handle.read(length))
            else:
                handle.seek(length, 1)
        else:
            raise ValueError(f"not a protobuf wire type: {wire}")


def _domain(message: bytes) -> str:
    """Field 1 (a string) of an OperatorSetIdProto; "" when absent (the default ONNX domain)."""
    pos = 0
    while pos < len(message):
        key, pos = _varint_at(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _varint_at(message, pos)
            if field == 1:
                return message[pos:pos + length].decode("utf-8", "replace")
            pos += length
        elif wire == 0:
            _, pos = _varint_at(message, pos)
        else:
            raise ValueError(f"unexpected wire type {wire} in an opset import")
    return ""


def _varint(handle: BinaryIO, allow_end: bool = False) -> Optional[int]:
    value, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            if allow_end and shift == 0:
                return None
            raise ValueError("the file ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a number longer than 64 bits")


def _varint_at(data: bytes, pos: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("a message ends inside a number")


# --------------------------------------------------------------------------------------- TorchScript

def check_torchscript_archive(path: Path) -> None:
    """Before ``torch.jit.load``: refuse code that would run during the load itself (``__setstate__``)."""
    for source in _archive_code(path):
        if _SETSTATE.search(source):
            raise BackendError(f"{path} defines __setstate__, code that torch would run while loading the file: "
                               "refused (an exported classifier has none)")


def _archive_code(path: Path) -> List[bytes]:
    """The TorchScript sources (``*/code/*.py``) of a .ts archive; none if it is not a zip (torch.jit.load
    then says what it is)."""
    try:
        with zipfile.ZipFile(str(path)) as archive:
            code = [info for info in archive.infolist() if "/code/" in info.filename and info.filename.endswith(".py")]
            size = sum(info.file_size for info in code)
            sources = [] if size > MAX_CODE_BYTES else [archive.read(info) for info in code]
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        log.debug("%s: not read as a zip archive before loading (%s)", path, exc)
        return []
    if size > MAX_CODE_BYTES:
        raise BackendError(f"{path}: its TorchScript code is over {MAX_CODE_BYTES >> 20} MB; not a classifier")
    return sources


def check_torchscript_operators(module, name: str) -> None:
    """After loading, before any inference: every operator ``forward`` reaches must be in TORCHSCRIPT_OPERATORS."""
    try:
        graph = module.forward.inlined_graph
    except (AttributeError, RuntimeError) as exc:
        raise BackendError(f"{name}: its forward graph cannot be read ({exc.__class__.__name__}); not a classifier "
                           "edge-export wrote") from None
    refused = sorted(graph_operators(graph) - TORCHSCRIPT_OPERATORS)
    if refused:
        raise BackendError(f"{name} runs {', '.join(refused)}, which no exported classifier uses: refused before "
                           "running it (a .ts file is code; export with edge-export, or use an .onnx model)")


def graph_operators(graph) -> Set[str]:
    """The kind of every node of a TorchScript graph, sub-blocks (if/loop bodies) included."""
    kinds: Set[str] = set()
    blocks = [graph]
    while blocks:
        for node in blocks.pop().nodes():
            kinds.add(node.kind())
            blocks.extend(node.blocks())
    return kinds
