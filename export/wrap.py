"""The module that gets exported: a classifier with the device's input contract built in.

The device hands over uint8 RGB pixels, NHWC, already resized and center-cropped; the cast, the
/255, the mean/std normalisation and the NHWC->NCHW transpose happen inside the graph (so a Jetson's
CPU does no float work per pixel), and the logits come out as float32 even from an FP16 model::

    wrapped = DeviceInput(model, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_kind="uint8", half=False)
    logits = wrapped(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from edge.contract import INPUT_UINT8


class DeviceInput(nn.Module):
    """``model`` behind the artifact's input contract (uint8 NHWC, or normalised float NCHW)."""

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float],
                 input_kind: str, half: bool) -> None:
        super().__init__()
        self.model = model.half() if half else model
        self.uint8_input = input_kind == INPUT_UINT8
        self.half = half
        dtype = torch.float16 if half else torch.float32
        mean_t = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add, computed in float64 then rounded once.
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).to(dtype))
        self.register_buffer("shift", (-mean_t / std_t).to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8_input:
            x = x.permute(0, 3, 1, 2).to(self.scale.dtype) * self.scale + self.shift
        elif self.half:
            x = x.half()
        return self.model(x).float()
