"""What the user sees: a human line, a JSON line, the label drawn on the frame, a window, a video.

    print(format_line("cat.jpg", prediction, topk=3))
    print(json_line({"source": "cat.jpg", **prediction.to_dict()}))
    write_image_atomic(Path("out/cat.jpg"), draw_label(frame, prediction))

    with VideoSink(Path("out.mp4"), fps=30) as video:    # written under a temporary name,
        video.write(draw_label(frame, prediction, fps))   # renamed into place when closed

Labels come from the model file or a labels file, names from the file system: both may hold control
characters, so everything shown to a person goes through :func:`printable` (a newline or an ANSI
escape in a label must not forge an output line or recolour a terminal). JSON is escaped by ``json``.
"""


import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Dict, Mapping, Optional

import cv2
import numpy as np

from .classify import Prediction
from .errors import EdgeError


class OutputError(EdgeError, ValueError):
    """An image or video that cannot be written as asked; the message is one line."""


def printable(text: str) -> str:
    """``text`` with control and bidi-format characters escaped (``\\n``, ``\\x1b``, ``\\u202e``), the rest as is."""
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf") else c for c in str(text))


def _escape(char: str) -> str:
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def format_line(source: str, prediction: Prediction, topk: int = 1, note: str = "") -> str:
    """``source: label (83.1%) note``, with the runners-up indented under it when ``topk`` > 1."""
    line = (f"{printable(source)}: {printable(prediction.label)} ({prediction.score:.1%})"
            + (f"  {note}" if note else ""))
    if topk > 1:
        line += "".join(f"\n    {rank}. {printable(k.label)} ({k.score:.1%})"
                        for rank, k in enumerate(prediction.topk[:topk], start=1))
    return line


def json_line(record: Mapping[str, object]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def draw_label(frame_bgr: np.ndarray, prediction: Prediction, fps: Optional[float] = None) -> np.ndarray:
    """A copy of the frame with the label and score (and FPS) in a dark band at the top."""
    out = frame_bgr.copy()
    text = f"{printable(prediction.label)} {prediction.score:.0%}" + (f"  {fps:.1f} fps" if fps is not None else "")
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
        raise OutputError(f"cannot encode an image as {suffix}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded.tobytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Container suffix -> a codec every OpenCV build can write (no H.264: pip's wheels lack an encoder for it).
VIDEO_CODECS: Dict[str, str] = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}


class VideoSink:
    """A video file written under a temporary name and renamed into place on ``close()``.

    The writer opens on the first frame (its size is the video's); later frames of another size (a
    camera that came back at another resolution) are scaled to it. A reader never sees a half-written
    file, and a run stopped by SIGTERM still leaves a finished, playable one.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        codec = VIDEO_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise OutputError(f"{self.path}: unknown video suffix {self.path.suffix or '(none)'!r}; use one of "
                             f"{', '.join(VIDEO_CODECS)}")
        self.fourcc = cv2.VideoWriter_fourcc(*codec)
        self.fps = fps
        self.frames = 0
        self._writer = None
        self._size = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.tmp-{os.getpid()}-", suffix=self.path.suffix,
                                   dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)

    def write(self, frame_bgr: np.ndarray) -> None:
        if self._writer is None:
            self._size = (frame_bgr.shape[1], frame_bgr.shape[0])
            self._writer = cv2.VideoWriter(str(self._tmp), self.fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise OutputError(f"{self.path}: OpenCV cannot write this kind of video here")
        if (frame_bgr.shape[1], frame_bgr.shape[0]) != self._size:
            frame_bgr = cv2.resize(frame_bgr, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame_bgr)
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it into place (nothing is left behind if no frame was written)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        if self.frames and self._tmp.exists():
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        try:
            self._tmp.unlink()
        except FileNotFoundError:  # renamed into place above
            pass

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_stale_temporaries(path: Path) -> None:
    """Delete the half-written videos that a killed run (SIGKILL, power loss) left beside ``path``.

    A temporary's name carries its writer's process id; one whose process is gone is never finished.
    """
    pattern = re.compile(r"\." + re.escape(path.stem) + r"\.tmp-(\d+)-[^/]*" + re.escape(path.suffix) + "$")
    for candidate in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        match = pattern.match(candidate.name)
        if match and not _process_alive(int(match.group(1))):
            try:
                candidate.unlink()
            except OSError:  # another run removed it first, or the folder is read-only: harmless
                pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True
