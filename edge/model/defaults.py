"""Where edge-classifier keeps things, and the default model used when ``--model`` is left out.

The default model is mobilenet_v2 with torchvision's ImageNet weights as ONNX, at ``$EDGE_MODEL`` or
``~/.cache/edge-classifier/mobilenet_v2_<precision>.onnx``: FP16 where onnxruntime here has a GPU
provider (CUDA, TensorRT), FP32 on a CPU-only host (where FP16 runs 1.2-2x slower). When it is missing and the host-side
``export`` package is installed, it is built once by running ``edge-export`` in a subprocess (so the
device side never imports torch itself)::

    path = ensure_default_model()      # builds it if it can, else raises DefaultModelError
"""


import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import List

from edge.errors import EdgeError

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class DefaultModelError(EdgeError, RuntimeError):
    """No default model, and no way to build it here; the message says what to do."""


def cache_root() -> Path:
    """``$EDGE_CACHE``, else ``$XDG_CACHE_HOME/edge-classifier``, else ``~/.cache/edge-classifier``."""
    if os.environ.get("EDGE_CACHE"):
        return Path(os.environ["EDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-classifier"


def default_precision() -> str:
    """``fp16`` where onnxruntime here can run the model on a GPU, ``fp32`` on a CPU (FP16 is slower there)."""
    try:
        import onnxruntime
    except ImportError:
        return "fp32"
    return "fp16" if set(GPU_PROVIDERS) & set(onnxruntime.get_available_providers()) else "fp32"


def default_model_name() -> str:
    return f"mobilenet_v2_{default_precision()}.onnx"


def default_model_path() -> Path:
    return Path(os.environ["EDGE_MODEL"]) if os.environ.get("EDGE_MODEL") else cache_root() / default_model_name()


def export_available() -> bool:
    """Whether this machine can build models (the ``export`` extra: torch, torchvision, onnx)."""
    return all(importlib.util.find_spec(name) is not None for name in ("export", "torch", "torchvision", "onnx"))


def export_command(path: Path, precision: str = "fp16") -> List[str]:
    """The edge-export call that builds the default model at ``path``."""
    return [sys.executable, "-m", "export.cli", "--arch", "mobilenet_v2", "--weights", "pretrained",
            "--precision", precision, "--out", str(path)]


def ensure_default_model() -> Path:
    """The default model's path, building it first if it is missing and this machine can."""
    path = default_model_path()
    if path.is_file():
        return path
    precision = default_precision()
    how = (f"edge-export --arch mobilenet_v2 --weights pretrained --precision {precision} --out {path}")
    if not export_available():
        raise DefaultModelError(
            f"no --model given and no default model at {path}: build it on a host with `{how}` and copy it "
            "there (or set EDGE_MODEL), or pass --model FILE")
    why = ("onnxruntime here has a GPU" if precision == "fp16"
           else "no GPU for onnxruntime here: FP16 is slower on a CPU")
    print(f"edge-classify: no --model given; building the default model (mobilenet_v2, ImageNet, "
          f"{precision.upper()}: {why}) at {path} with edge-export, once", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(export_command(path, precision), stdout=subprocess.DEVNULL)
    if result.returncode != 0 or not path.is_file():
        raise DefaultModelError("could not build the default model (see the line above); pass --model FILE")
    return path
