"""TorchScript backend: CUDA when torch sees a GPU, else the CPU. The only place ``edge`` imports torch.

    backend = TorchScriptBackend(Path("model.ts"), device="auto")
    backend.provider      # "cuda" or "cpu"

A .ts file is code: before it is loaded and before anything runs it, ``edge.model.backends.modelcheck``
refuses a load-time ``__setstate__`` and any operator an exported classifier does not use.
"""


import json
import logging
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from edge.contract import DEFAULT_INPUT_SIDE, INPUT_FLOAT, INPUT_UINT8, TORCHSCRIPT_METADATA_FILE, Key
from edge.errors import one_line
from edge.model.backends import MESSAGE_LIMIT, BackendError, cpu_threads_beside, import_runtime
from edge.model.backends.modelcheck import check_torchscript_archive, check_torchscript_operators

log = logging.getLogger(__name__)

INSTALL_HINT = ("torch is not installed: a .ts model needs PyTorch (on a Jetson, NVIDIA's torch wheel for your "
                "JetPack; elsewhere pip install torch), or export an .onnx model instead")


class TorchScriptBackend:
    """A TorchScript artifact loaded with ``torch.jit.load``."""

    def __init__(self, path: Path, device: str = "auto", threads: Optional[int] = None, spare_cores: int = 0) -> None:
        torch = import_runtime("torch", INSTALL_HINT)
        self._torch = torch
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("--device cuda: torch sees no CUDA GPU")
        self.device = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
        if threads is None and self.device == "cpu":
            threads = cpu_threads_beside(spare_cores)
        if threads is not None:  # at least 1: edge.settings checks it
            torch.set_num_threads(threads)
        extra = {TORCHSCRIPT_METADATA_FILE: ""}
        check_torchscript_archive(path)  # torch.jit.load runs a scripted __setstate__
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch 2.14 calls torch.jit deprecated; Jetsons still load it
                self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra).eval()
            self.metadata: Dict[str, str] = json.loads(extra[TORCHSCRIPT_METADATA_FILE] or "{}")
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(f"{path} is not a TorchScript model torch can load ({one_line(exc, MESSAGE_LIMIT)})") from None
        started = time.perf_counter()
        check_torchscript_operators(self.module, str(path))  # before the warm-up runs forward
        log.debug("%s: operators checked in %.1f ms", path.name,
                  (time.perf_counter() - started) * 1e3)
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True
        self.provider = self.device
        self._read_signature(path)
        log.info("torch %s running %s on %s", torch.__version__, path.name, self.device)

    def _read_signature(self, path: Path) -> None:
        """Input shape and dtype, class count: from the metadata (a TorchScript graph does not say them)."""
        if not isinstance(self.metadata, dict) or not all(isinstance(v, str) for v in self.metadata.values()):
            raise BackendError(f"{path}: its metadata is not a table of text values")
        try:
            side = int(self.metadata.get(Key.INPUT_SIDE, DEFAULT_INPUT_SIDE))
            classes = self.metadata.get(Key.NUM_CLASSES)
            self.num_classes: Optional[int] = int(classes) if classes else None
        except ValueError:
            raise BackendError(f"{path}: its metadata gives a size that is not a whole number "
                               f"(input side {self.metadata.get(Key.INPUT_SIDE)!r}, "
                               f"classes {self.metadata.get(Key.NUM_CLASSES)!r})") from None
        # A TorchScript file from elsewhere (no metadata) most likely takes normalised float NCHW.
        default_input = INPUT_UINT8 if self.metadata else INPUT_FLOAT
        self.input_dtype = "uint8" if self.metadata.get(Key.INPUT, default_input) == INPUT_UINT8 else "float32"
        self.input_shape: List[Optional[int]] = ([None, side, side, 3] if self.input_dtype == "uint8"
                                                  else [None, 3, side, side])

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
            try:
                logits = self.module(tensor)
                return logits.float().cpu().numpy()
            except Exception as exc:  # a scripted raise is torch.jit.Error; a wrong output type AttributeError
                raise BackendError(f"the TorchScript model failed to run: {one_line(exc, MESSAGE_LIMIT)}") from None
