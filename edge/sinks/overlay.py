"""The label drawn on the frame, and the window that shows it (``--display``).

    overlay = draw_label(frame_bgr, prediction, fps=29.7)            # name="door": the source's name first
    window = Window(fullscreen=False, stop=stop)     # q, Esc or closing the window sets ``stop``
"""


import threading
from typing import Optional

import cv2
import numpy as np

from edge.model.classify import Prediction
from edge.sinks import Result
from edge.sinks.console import percent, printable

WINDOW = "edge-classify"


def draw_label(frame_bgr: np.ndarray, prediction: Prediction, fps: Optional[float] = None,
               name: Optional[str] = None) -> np.ndarray:
    """A copy of the frame with the label and score (and FPS; the source's name first) in a band at the top."""
    text = f"{printable(prediction.label)} {percent(prediction.score, 0)}"
    if fps is not None:
        text += f"  {fps:.1f} fps"
    return draw_text(frame_bgr, f"{printable(name)}: {text}" if name else text)


def draw_text(frame_bgr: np.ndarray, text: str) -> np.ndarray:
    """A copy of the frame with one line of text in a dark band at the top, sized to the frame."""
    out = frame_bgr.copy()
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


class Window:
    """Shows each frame with its label (``--display``); q, Esc or closing the window stops the run."""

    def __init__(self, fullscreen: bool, stop: threading.Event, source: Optional[str] = None) -> None:
        self.fullscreen = fullscreen
        self.stop = stop
        self.title = WINDOW if source is None else f"{WINDOW}: {source}"  # a window per source when several
        self._open = False

    def write(self, result: Result) -> None:
        overlay = result.overlay()
        if not self._open:
            open_window(overlay.shape[1], overlay.shape[0], self.fullscreen, self.title)
            self._open = True
        cv2.imshow(self.title, overlay)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.stop.set()

    def close(self) -> None:
        cv2.destroyAllWindows()


def open_window(width: int, height: int, fullscreen: bool, title: str = WINDOW) -> None:
    """The display window, opened on the first frame: at the frame's size, or filling the screen.

    A resizable window (WINDOW_NORMAL) opens at the GUI's default size (400x300) and shrinks the picture
    into it, and Qt's toolbar and status bar (WINDOW_GUI_EXPANDED, its default) take more of it: so no
    toolbar, and the window is sized to the frame. Fullscreen is asked for after that, so a window
    manager that ignores it still shows the frame at its size.
    """
    flags = cv2.WINDOW_NORMAL | getattr(cv2, "WINDOW_KEEPRATIO", 0) | getattr(cv2, "WINDOW_GUI_NORMAL", 0)
    cv2.namedWindow(title, flags)
    cv2.resizeWindow(title, int(width), int(height))
    if fullscreen:
        cv2.setWindowProperty(title, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)


def opencv_has_gui() -> bool:
    """Whether this OpenCV can open a window (pip's -headless wheels cannot)."""
    try:
        cv2.namedWindow("edge-classify-probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("edge-classify-probe")
        return True
    except cv2.error:
        return False
