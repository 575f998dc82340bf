"""TorchScript backend: CUDA when torch sees a GPU, else the CPU. The only place ``edge`` imports torch.

    backend = TorchScriptBackend(Path("model.ts"), device="auto")
    backend.provider      # "cuda" or "cpu"
"""


import json
import logging
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..contract import DEFAULT_INPUT_SIDE, INPUT_FLOAT, INPUT_UINT8, TORCHSCRIPT_METADATA_FILE, Key
from ..errors import one_line
from . import MESSAGE_LIMIT, BackendError, cpu_threads_beside

log = logging.getLogger(__name__)

INSTALL_HINT = ("torch is not installed: a .ts model needs PyTorch (on a Jetson, NVIDIA's torch wheel for your "
                "JetPack; elsewhere pip install torch), or export an .onnx model instead")


class TorchScriptBackend:
    """A TorchScript artifact loaded with ``torch.jit.load``."""

    def __init__(self, path: Path, device: str = "auto", threads: Optional[int] = None, spare_cores: int = 0) -> None:
        try:
            import torch
        except ImportError:
            raise BackendError(INSTALL_HINT) from None
        self._torch = torch
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("--device cuda: torch sees no CUDA GPU")
        self.device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        if threads is None and self.device == "cpu":
            threads = cpu_threads_beside(spare_cores)
        if threads is not None:
            if threads < 1:
                raise BackendError(f"--threads must be at least 1, not {threads}")
            torch.set_num_threads(threads)
        extra = {TORCHSCRIPT_METADATA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch 2.14 calls torch.jit deprecated; Jetsons still load it
                self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra).eval()
            self.metadata: Dict[str, str] = json.loads(extra[TORCHSCRIPT_METADATA_FILE] or "{}")
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(f"{path} is not a TorchScript model torch can load ({one_line(exc, MESSAGE_LIMIT)})") from None
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True
        elif self.metadata.get(Key.PRECISION) == "fp16":
            log.warning("%s is FP16: it runs slowly on a CPU (export --precision fp32 for CPUs)", path.name)
        self.provider = self.device
        side = int(self.metadata.get(Key.INPUT_SIDE, DEFAULT_INPUT_SIDE))
        # A TorchScript file from elsewhere (no metadata) most likely takes normalised float NCHW.
        default_input = INPUT_UINT8 if self.metadata else INPUT_FLOAT
        self.input_dtype = "uint8" if self.metadata.get(Key.INPUT, default_input) == INPUT_UINT8 else "float32"
        self.input_shape: List[Optional[int]] = ([None, side, side, 3] if self.input_dtype == "uint8"
                                                  else [None, 3, side, side])
        classes = self.metadata.get(Key.NUM_CLASSES)
        self.num_classes: Optional[int] = int(classes) if classes else None
        log.info("torch %s running %s on %s", torch.__version__, path.name, self.device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
            try:
                logits = self.module(tensor)
                return logits.float().cpu().numpy()
            except Exception as exc:  # a scripted raise is torch.jit.Error; a wrong output type AttributeError
                raise BackendError(f"the TorchScript model failed to run: {one_line(exc, MESSAGE_LIMIT)}") from None
