"""ONNX Runtime backend: TensorRT (FP16, engine cache) > CUDA > CPU, whichever this onnxruntime has.

    backend = OnnxRuntimeBackend(Path("model.onnx"), device="auto")
    backend.provider      # e.g. "TensorrtExecutionProvider" on a Jetson, "CPUExecutionProvider" here

A TensorRT engine built on one machine does not load on another, so the engine cache lives in a
folder named after the model file's hash, the TensorRT version and the GPU.

CPU threads: when the GPU runs the model, onnxruntime's intra-op pool gets one thread and does not
spin (spinning threads only take cores from capture and preprocessing); on a CPU the pool keeps
onnxruntime's defaults (one thread per core, spinning), which won on an idle host. ``threads=N``
(``--threads``) sets the pool's size and turns spinning off, for a host shared with other work.
"""


import ctypes.util
import hashlib
import logging
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..defaults import cache_root
from . import BackendError

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_INTRA_OP_THREADS = 1  # with CUDA/TensorRT the CPU part of the graph is a few small ops
NO_SPINNING = ("session.intra_op.allow_spinning", "0")  # a session config entry since onnxruntime 1.x
INSTALL_HINT = ("onnxruntime is not installed: pip install 'edge-classifier[runtime]' "
                "(on a Jetson, install NVIDIA's onnxruntime-gpu wheel for your JetPack)")


class OnnxRuntimeBackend:
    """An ONNX artifact in an onnxruntime session."""

    def __init__(self, path: Path, device: str = "auto", threads: Optional[int] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(INSTALL_HINT) from None
        providers = choose_providers(ort.get_available_providers(), device, path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: provider fallbacks are reported by us
        set_cpu_threads(options, providers, threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise BackendError(f"{path} is not an ONNX model onnxruntime can load ({_first_line(exc)})") from None
        self.provider = self.session.get_providers()[0]
        log.info("onnxruntime %s running %s on %s", ort.__version__, path.name, self.provider)
        model_input = self.session.get_inputs()[0]
        model_output = self.session.get_outputs()[0]
        self.input_name, self.output_name = model_input.name, model_output.name
        self.input_shape: List[Optional[int]] = [d if isinstance(d, int) else None for d in model_input.shape]
        self.input_dtype = "uint8" if model_input.type == "tensor(uint8)" else "float32"
        width = model_output.shape[-1] if model_output.shape else None
        self.num_classes = width if isinstance(width, int) else None
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.input_dtype == "float32" and batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        return logits.astype(np.float32, copy=False)


def set_cpu_threads(options, providers: List, threads: Optional[int]) -> None:
    """Size onnxruntime's CPU pool: ``threads`` if given, one with a GPU provider, else its defaults.

    Without spinning whenever we size it: a spinning pool keeps its cores busy between runs, and
    with a GPU or other work on the host those cores are what capture and preprocessing need.
    """
    gpu = bool(providers) and _provider_name(providers[0]) != CPU
    if threads is not None and threads < 1:
        raise BackendError(f"--threads must be at least 1, not {threads}")
    if threads is None and not gpu:
        return
    options.intra_op_num_threads = threads or GPU_INTRA_OP_THREADS
    options.add_session_config_entry(*NO_SPINNING)


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def choose_providers(available: List[str], device: str, model: Path) -> List:
    """The providers to ask for, best first, filtered to what this onnxruntime build has."""
    if device == "cpu":
        return [CPU]
    gpu = [p for p in (TENSORRT, CUDA) if p in available]
    if device == "cuda" and not gpu:
        raise BackendError("--device cuda: this onnxruntime has no CUDA or TensorRT provider "
                           f"(it has {', '.join(available)}); install onnxruntime-gpu")
    chosen: List = []
    for name in gpu:
        chosen.append((TENSORRT, tensorrt_options(model)) if name == TENSORRT else name)
    return chosen + [CPU]


def tensorrt_options(model: Path) -> Dict[str, str]:
    """FP16 kernels and an engine cache keyed on the model, the TensorRT version and the GPU."""
    cache = engine_cache_dir(model)
    cache.mkdir(parents=True, exist_ok=True)
    return {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}


def engine_cache_dir(model: Path) -> Path:
    """``$EDGE_CACHE/trt/<model sha256>-trt<version>-<gpu>`` (EDGE_CACHE defaults to ~/.cache/edge-classifier)."""
    digest = hashlib.sha256()
    with open(model, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    key = f"{digest.hexdigest()[:16]}-trt{_tensorrt_version()}-{_gpu_name()}"
    return cache_root() / "trt" / re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def _tensorrt_version() -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # not installed as a Python distribution (JetPack's apt packages, for one)
        library = ctypes.util.find_library("nvinfer") or ""
        match = re.search(r"so\.([\d.]+)", library)
        return match.group(1) if match else "unknown"


def _gpu_name() -> str:
    jetson_model = Path("/proc/device-tree/model")
    if jetson_model.is_file():
        return jetson_model.read_text(errors="replace").strip("\x00\n ")
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, universal_newlines=True, timeout=5, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "gpu"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
