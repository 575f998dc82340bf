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
import json
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from edge.model.defaults import cache_root
from edge.errors import one_line
from edge.model.backends import MESSAGE_LIMIT, BackendError, cpu_threads_beside, import_runtime
from edge.model.backends.modelcheck import check_onnx_domains

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_INTRA_OP_THREADS = 1  # with CUDA/TensorRT the CPU part of the graph is a few small ops
NO_SPINNING = ("session.intra_op.allow_spinning", "0")  # a session config entry since onnxruntime 1.x
INSTALL_HINT = ("onnxruntime is not installed: pip install '.[runtime]' in the edge-classifier checkout "
                "(on a Jetson, install NVIDIA's onnxruntime-gpu wheel for your JetPack)")


class OnnxRuntimeBackend:
    """An ONNX artifact in an onnxruntime session."""

    def __init__(self, path: Path, device: str = "auto", threads: Optional[int] = None, spare_cores: int = 0) -> None:
        ort = import_runtime("onnxruntime", INSTALL_HINT)
        check_onnx_domains(path)
        providers = choose_providers(ort.get_available_providers(), device, path, ort.__version__)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: provider fallbacks are reported by us
        set_cpu_threads(options, providers, threads, spare_cores)
        report_placement = log.isEnabledFor(logging.DEBUG)
        if report_placement:  # the profile is the one place onnxruntime says which provider runs each node
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"edge-classify-{os.getpid()}")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise BackendError(f"{path} is not an ONNX model onnxruntime can load ({one_line(exc, MESSAGE_LIMIT)})") from None
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
        if report_placement:
            log_node_placement(self.session, self)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.input_dtype == "float32" and batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        try:
            logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:  # onnxruntime's pybind errors (Fail, InvalidArgument, ...) share no base class
            raise BackendError(f"onnxruntime failed to run the model: {one_line(exc, MESSAGE_LIMIT)}") from None
        return np.asarray(logits).astype(np.float32, copy=False)


def set_cpu_threads(options, providers: List, threads: Optional[int], spare_cores: int = 0) -> None:
    """Size onnxruntime's CPU pool: ``threads`` if given, one with a GPU provider, the usable cores less
    ``spare_cores`` on a CPU when some are to be kept, else its defaults.

    Without spinning whenever we size it: a spinning pool keeps its cores busy between runs, and
    with a GPU or other work on the host those cores are what capture and preprocessing need.
    """
    gpu = bool(providers) and _provider_name(providers[0]) != CPU
    if threads is None and not gpu:
        threads = cpu_threads_beside(spare_cores)
    if threads is None and not gpu:
        return
    options.intra_op_num_threads = threads or GPU_INTRA_OP_THREADS
    options.add_session_config_entry(*NO_SPINNING)


def _provider_name(provider) -> str:
    return provider[0] if isinstance(provider, tuple) else provider


def choose_providers(available: List[str], device: str, model: Path, ort_version: str = "1.10.0") -> List:
    """The providers to ask for, best first, filtered to what this onnxruntime build has.

    CUDA stays after TensorRT even when TensorRT is there: TensorRT before 8.5 (JetPack 4.6) has no
    uint8 input, so it leaves the artifact's input Cast to the next provider, and CUDA keeps that
    on the GPU instead of copying the frame through the CPU provider.
    """
    if device == "cpu":
        return [CPU]
    gpu = [p for p in (TENSORRT, CUDA) if p in available]
    if device == "cuda" and not gpu:
        raise BackendError("--device cuda: this onnxruntime has no CUDA or TensorRT provider "
                           f"(it has {', '.join(available)}); install onnxruntime-gpu")
    chosen: List = []
    for name in gpu:
        chosen.append((TENSORRT, tensorrt_options(model, ort_version)) if name == TENSORRT else name)
    return chosen + [CPU]


def tensorrt_options(model: Path, ort_version: str = "1.10.0") -> Dict[str, str]:
    """FP16 kernels and an engine cache keyed on the model, the TensorRT version and the GPU.

    Only options this onnxruntime accepts: 1.10 and 1.11 (JetPack 4.6's wheels) reject unknown keys,
    and know the FP16 and engine cache ones; the timing cache (faster rebuilds) arrived in 1.15.
    Values are the strings "True"/"False", which every version parses.
    """
    cache = engine_cache_dir(model)
    cache.mkdir(parents=True, exist_ok=True)
    options = {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}
    if version_tuple(ort_version) >= (1, 15):
        options.update({"trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)})
    return options


def version_tuple(text: str) -> Tuple[int, ...]:
    """``"1.10.0"`` -> ``(1, 10, 0)``; a suffix such as ``+cu118`` or ``rc1`` ends the numbers."""
    numbers = []
    for part in text.split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def log_node_placement(session, backend: "OnnxRuntimeBackend") -> None:
    """Run one inference with profiling on and log how many graph nodes each provider ran (``-v``).

    With TensorRT, whatever it cannot take (before 8.5: the uint8 input's Cast) falls to CUDA or the
    CPU; this line is how a user sees that.
    """
    shape = [d if d else 1 for d in backend.input_shape]
    dtype = np.uint8 if backend.input_dtype == "uint8" else np.float32
    try:
        session.run([backend.output_name], {backend.input_name: np.zeros(shape, dtype)})
    except Exception as exc:  # a model that cannot run is reported by the caller's own first run
        log.debug("node placement: the profiling run failed (%s)", one_line(exc, MESSAGE_LIMIT))
    profile = Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        events = []
    finally:
        try:
            profile.unlink()
        except OSError:
            pass
    counts = count_nodes_by_provider(events)
    log.debug("onnxruntime node placement: %s",
              ", ".join(f"{n} on {p}" for p, n in sorted(counts.items())) or "not reported")


def count_nodes_by_provider(events: List[dict]) -> Dict[str, int]:
    """Distinct nodes per execution provider in an onnxruntime profile (its list of trace events)."""
    nodes: Dict[str, set] = {}
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or not isinstance(event.get("args"), dict):
            continue
        name, provider = str(event.get("name", "")), event["args"].get("provider")
        # Each node also has "_fence_before"/"_fence_after" events (onnxruntime 1.10); its run is "_kernel_time".
        if event.get("cat") == "Node" and name.endswith("_kernel_time") and provider:
            nodes.setdefault(str(provider), set()).add(name)
    return {provider: len(names) for provider, names in nodes.items()}


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
