"""Inference backends: one small protocol, one implementation per artifact format, picked by suffix.

    backend = open_backend(Path("model.onnx"))          # or backend="torchscript", device="cpu"
    logits = backend.run(batch)                         # float32 [N, classes]
    backend.metadata, backend.provider                  # what the file says; what runs it

Each implementation imports its runtime lazily, so ``edge`` never loads torch for an ONNX model.
"""


import importlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

try:
    from typing import Protocol  # novermin (3.8+; the except branch covers 3.6 and 3.7)
except ImportError:  # Python < 3.8 (JetPack 4.6): the standard backport
    from typing_extensions import Protocol  # type: ignore[assignment]

import numpy as np

from edge.errors import EdgeError


MESSAGE_LIMIT = 200  # characters of a runtime's own error message kept in ours


class BackendError(EdgeError, RuntimeError):
    """The model cannot be loaded or run; the message is one line for the user."""


class Backend(Protocol):
    """What the classify step needs from a runtime."""

    metadata: Dict[str, str]
    input_shape: List[Optional[int]]  # None where the dimension is dynamic
    input_dtype: str  # "uint8" or "float32"
    num_classes: Optional[int]
    provider: str  # what actually runs the model, e.g. "CUDAExecutionProvider", "cuda", "cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits, float32 ``[N, num_classes]``."""
        ...


# name -> (module, class, file suffixes)
BACKENDS: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "onnxruntime": ("edge.model.backends.onnxruntime", "OnnxRuntimeBackend", (".onnx",)),
    "torchscript": ("edge.model.backends.torchscript", "TorchScriptBackend", (".ts", ".pt", ".pth", ".torchscript")),
}
DEVICES = ("auto", "cuda", "cpu")


def backend_for(path: Path) -> str:
    """The backend a file's suffix asks for."""
    suffix = Path(path).suffix.lower()
    for name, (_, _, suffixes) in BACKENDS.items():
        if suffix in suffixes:
            return name
    known = ", ".join(s for _, _, suffixes in BACKENDS.values() for s in suffixes)
    raise BackendError(f"{path}: cannot tell the model format from the suffix {suffix or '(none)'!r} "
                       f"(expected {known}; or pass --backend)")


def open_backend(path: Path, backend: str = "auto", device: str = "auto", threads: Optional[int] = None,
                 spare_cores: int = 0) -> Backend:
    """Load ``path`` with ``backend`` (``auto``: by suffix) on ``device`` (``auto``: the GPU if there is one).

    ``threads``: CPU threads for the runtime (None: its default for the device; see each backend).
    ``spare_cores``: when ``threads`` is None and the model runs on the CPU, it gets the cores this
    process may use less these (onnxruntime's pool then without busy-waiting; torch's OpenMP pool keeps
    its own wait policy), so ``edge-classify --image`` can decode beside it.
    """
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"model file not found: {path}")
    name = backend_for(path) if backend == "auto" else backend
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    module_name, class_name, _ = BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(path, device=device, threads=threads, spare_cores=spare_cores)


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def gpu_expected(path: Path, backend: str = "auto", device: str = "auto") -> bool:
    """Whether ``path`` will run on a GPU, known before it loads (a CPU model's thread pool is sized once,
    at load, with the cores its read-ahead needs left over): ``--device``, and what the runtime sees."""
    if device == "cpu":
        return False
    name = backend_for(path) if backend == "auto" else backend
    try:
        if name == "onnxruntime":
            import onnxruntime

            return any(p in onnxruntime.get_available_providers() for p in GPU_PROVIDERS)
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # the backend reports the missing runtime when it loads
        return False


def import_runtime(module: str, install_hint: str):
    """The runtime module a backend needs (``onnxruntime``, ``torch``), or BackendError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendError(install_hint) from None


def runs_on_cpu(provider: str) -> bool:
    """Whether a backend's ``provider`` (CPUExecutionProvider, cpu, CUDAExecutionProvider, cuda...) is the CPU."""
    return provider.lower().startswith("cpu")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads_beside(spare_cores: int) -> Optional[int]:
    """The model's CPU threads when ``spare_cores`` are kept for other work; None: none are kept."""
    return max(usable_cores() - spare_cores, 1) if spare_cores > 0 else None
