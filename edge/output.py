"""What the user sees: a human line, a JSON line, or the label drawn on the frame.

    print(format_line("cat.jpg", prediction, topk=3))
    print(json_line({"source": "cat.jpg", **prediction.to_dict()}))
    write_image_atomic(Path("out/cat.jpg"), draw_label(frame, prediction))
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import cv2
import numpy as np

from .classify import Prediction


def format_line(source: str, prediction: Prediction, topk: int = 1) -> str:
    """``source: label (83.1%)``, with the runners-up indented under it when ``topk`` > 1."""
    line = f"{source}: {prediction.label} ({prediction.score:.1%})"
    if topk > 1:
        line += "".join(f"\n    {rank}. {k.label} ({k.score:.1%})"
                        for rank, k in enumerate(prediction.topk[:topk], start=1))
    return line


def json_line(record: Mapping[str, object]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def draw_label(frame_bgr: np.ndarray, prediction: Prediction, fps: Optional[float] = None) -> np.ndarray:
    """A copy of the frame with the label and score (and FPS) in a dark band at the top."""
    out = frame_bgr.copy()
    text = f"{prediction.label} {prediction.score:.0%}" + (f"  {fps:.1f} fps" if fps is not None else "")
    height, width = out.shape[:2]
    scale = max(0.4, min(width, height) / 640.0)
    thickness = max(1, int(round(scale * 2)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, int(6 * scale))
    band = out[: text_h + baseline + 2 * pad, : min(width, text_w + 2 * pad)]
    band[:] = (band * 0.35).astype(np.uint8)  # darken, keeping the picture visible under the text
    cv2.putText(out, text, (pad, pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return out


def write_image_atomic(path: Path, frame_bgr: np.ndarray) -> None:
    """Encode by the suffix and write via a temporary file, so a reader never sees half an image."""
    path = Path(path)
    suffix = path.suffix.lower() or ".jpg"
    ok, encoded = cv2.imencode(suffix, frame_bgr)
    if not ok:
        raise ValueError(f"cannot encode an image as {suffix}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded.tobytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
