"""Where results go: console lines and JSON, labelled images or a video, a window, MQTT, Prometheus.

Every sink has the same two methods, and the loop (``edge.pipeline``) hands each classified frame to
every sink as one :class:`Result`::

    for sink in sinks:
        sink.write(result)      # must not block the loop for long: slow work goes to a thread of its own
    ...
    sink.close()                # in ``finally``: a video is finished and renamed into place, a queue flushed

``console`` prints, ``files`` writes labelled copies, ``overlay`` draws and shows a window, ``telemetry``
publishes to MQTT (with its sqlite3 queue, ``mqtt``/``spool``) and serves Prometheus (``metrics``).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

try:
    from typing import Protocol  # novermin (3.8+; the except branch covers 3.6 and 3.7)
except ImportError:  # Python < 3.8 (JetPack 4.6): the standard backport
    from typing_extensions import Protocol  # type: ignore[assignment]


@dataclass
class Result:
    """One classified frame: its name, number, the frame, the prediction, and what the loop measured.

    ``record`` is the JSON object ``--json`` prints (and MQTT publishes); :meth:`overlay` is the frame
    with its label drawn, made once however many sinks want it.
    """

    name: str
    number: int  # the image's place in the list, or the stream frame's count
    frame: Any
    prediction: Any
    record: Dict[str, Any]
    fps: float
    age_ms: float
    stages: Dict[str, float]
    show_fps: bool = True
    _overlay: Optional[Any] = field(default=None, repr=False)

    def overlay(self) -> Any:
        """The frame with its label (and, for a stream, the FPS) in a band at the top."""
        if self._overlay is None:
            from edge.sinks.overlay import draw_label

            self._overlay = draw_label(self.frame.image, self.prediction, self.fps if self.show_fps else None)
        return self._overlay


class Sink(Protocol):
    """What the loop needs from a place results go."""

    def write(self, result: Result) -> None:
        ...

    def close(self) -> None:
        ...
