"""The live view (``--serve [HOST:]PORT``): what a headless Jetson sees, in a browser, from one HTTP server.

``edge.cli`` adds the flags (``add_serve_arguments``) and checks them (``check_serve_arguments``);
``edge.pipeline`` opens the view before the first frame and hands each frame over::

    options = ServeOptions.from_args(args)                                  # None without --serve
    live = LiveView.open(options, ["door", "yard"], classifier, metrics=None)   # ServeError: exit 2
    live.watch("door", grabber)                                             # drops, reconnects
    live.frame("door", image_bgr, record, prediction, stages_ms, age_ms, fps)   # per frame: a reference, no work
    live.close()

Served (by ``edge.sinks.httpd``: loopback unless told, a token beyond it, bounded connections):

    /              live.html (package data): the picture, label, top-k, label changes, FPS, age, stages, model;
                   with several sources, a mosaic of them all and a line each (``/?source=NAME``: one of them)
    /stream.mjpg   the annotated picture, multipart/x-mixed-replace; each part has X-Frame and X-Captured
    /snapshot.jpg  one annotated JPEG
    /api/status    the same facts as JSON (``sources``: a line per source)
    /api/events    server-sent events: one JSON record per label change (``?every=frame``: also each source's
                   newest frame, at most ``--serve-fps`` a second)
    /metrics       the Prometheus text of ``--metrics-port`` (the same registry when both are given)

The picture, the snapshot, the status and the events take ``?source=NAME`` (a name the ``--json`` lines
carry); without it, one source's, or with several the mosaic (a grid of tiles, one per source) and all.
It costs nothing unwatched: the loop thread only stores a reference to its frame. One encoder thread
runs while at least one picture is wanted: at most ``--serve-fps`` a second it scales the newest frames
to ``MAX_SIDE``, draws the labels and encodes one JPEG per picture that every viewer of it shares; each
viewer's thread sends the newest JPEG when its previous one has gone out, so a slow viewer skips frames
for itself. A browser holds one connection per picture, so the page shows several sources in one.
"""


import argparse
import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

from edge.sinks.httpd import (Address, GuardedHandler, GuardedServer, ServeError, check_exposure,
                              parse_address)

log = logging.getLogger("edge-classify")

DEFAULT_FPS = 5.0
MAX_FPS = 30.0
MAX_SIDE = 960  # the longest side of the served picture
JPEG_QUALITY = 80
HISTORY = 20  # label changes shown on the page
EVENTS_KEPT = 256
KEEPALIVE_S = 15.0  # an idle event stream sends a comment this often (proxies, dead clients)
SNAPSHOT_WAIT_S = 3.0
PAGE = "live.html"
SHARED_SCRIPT = "page.js"  # the token-carrying url() of every page, put inside each when served
TILE_ASPECT = 16 / 9  # the mosaic's tiles (several sources)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live view in a browser (cameras, videos and streams)")
    group.add_argument("--serve", metavar="[HOST:]PORT",
                       help="serve a live view (picture, label, top-k, FPS, lag, model) on http://127.0.0.1:PORT "
                            "(reach it with ssh -L PORT:localhost:PORT); another HOST (0.0.0.0, [::]) needs "
                            "$EDGE_SERVE_TOKEN. Also /stream.mjpg, /snapshot.jpg, /api/status, /api/events, /metrics")
    group.add_argument("--serve-fps", type=float, default=DEFAULT_FPS, metavar="F",
                       help=f"the live picture's most frames per second (default {DEFAULT_FPS:g}); encoded only while "
                            f"someone watches, at most {MAX_SIDE} pixels on its longest side")


def check_serve_arguments(args: Any) -> Optional[str]:
    """Why ``--serve`` cannot work as given (checked before the model loads), or None."""
    serve = getattr(args, "serve", None)
    if serve is None:
        return None
    if getattr(args, "image", None):
        return "--serve is for --camera and --source (a stream of frames), not --image"
    if not (0 < args.serve_fps <= MAX_FPS):
        return f"--serve-fps must be more than 0 and at most {MAX_FPS:g}, not {args.serve_fps}"
    try:
        check_exposure(parse_address(serve, "--serve"), "--serve")
    except ServeError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class ServeOptions:
    address: Address
    fps: float = DEFAULT_FPS
    model: str = ""  # the model file, shown and hashed

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Optional[ServeOptions]":
        if getattr(args, "serve", None) is None:
            return None
        model = getattr(args, "model", None)
        if model is None:
            from edge.model.defaults import default_model_path

            model = default_model_path()
        return cls(parse_address(args.serve, "--serve"), args.serve_fps, str(model))


class Latest(NamedTuple):
    """The newest frame as the loop handed it over (the image is the loop's own array, never written to)."""

    image: Any
    prediction: Any
    number: int
    captured: float  # wall-clock seconds
    fps: float
    age_ms: float
    stages_ms: Dict[str, float]


class Encoded(NamedTuple):
    seq: int
    jpeg: bytes
    number: int  # the frame's number (a mosaic: its own count)
    captured: float  # the frame's capture time (a mosaic: its oldest tile's)
    encode_ms: float


class Channel:
    """One source's side of the view: its newest frame and its drop and reconnect counts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latest: Optional[Latest] = None
        self.last_label: Optional[str] = None
        self.dropped: Callable[[], int] = lambda: 0
        self.reconnects: Callable[[], int] = lambda: 0

    def health(self) -> Dict[str, int]:
        return {"dropped": self.dropped(), "reconnects": self.reconnects()}

    def summary(self) -> Dict[str, Any]:
        """What the page's table of sources shows of it (``/api/status``'s ``sources``)."""
        facts = frame_facts(self.latest)
        keep = ("frame", "time", "label", "score", "fps", "age_ms")
        return dict({"name": self.name, "health": self.health()}, **{k: facts[k] for k in keep if k in facts})


class Picture:
    """A JPEG of what some channels show (one source's frame, or the mosaic of all), encoded only while someone
    wants it, at most ``--serve-fps`` a second; every viewer shares it."""

    def __init__(self, channels: Sequence[Channel], view: "LiveView") -> None:
        self.channels = list(channels)
        self.view = view
        self.encoded: Optional[Encoded] = None
        self.viewers = 0
        self._viewers_lock = threading.Lock()
        self._made_from: Tuple[Optional[Latest], ...] = ()  # the frames the encoded JPEG shows
        self._new_jpeg = threading.Condition()

    def frames(self) -> Tuple[Optional[Latest], ...]:
        return tuple(channel.latest for channel in self.channels)

    def current(self) -> bool:
        """True when the encoded JPEG shows the newest frames."""
        return self.encoded is not None and all(a is b for a, b in zip(self._made_from, self.frames()))

    def viewer(self, delta: int) -> None:
        with self._viewers_lock:
            self.viewers += delta
        if self.viewers > 0:
            self.view.wake_encoder()

    def refresh(self) -> Optional[float]:
        """Encode the newest frames if they are not encoded yet: the seconds it took, or None (nothing new)."""
        import cv2

        frames = self.frames()
        if all(latest is None for latest in frames) or self.current():
            return None
        started = time.monotonic()
        try:
            jpeg = jpeg_of(draw_picture(frames, [c.name for c in self.channels]))
        except (cv2.error, ValueError) as exc:  # a frame OpenCV cannot encode: skip it, keep serving
            log.debug("live view: cannot encode a frame: %s", exc)
            self._made_from = frames
            return None
        seconds = time.monotonic() - started
        present = [latest for latest in frames if latest is not None]
        with self._new_jpeg:
            seq = self.encoded.seq + 1 if self.encoded is not None else 1
            number = present[0].number if len(frames) == 1 else seq
            self.encoded = Encoded(seq, jpeg, number, min(l.captured for l in present), seconds * 1e3)
            self._made_from = frames
            self._new_jpeg.notify_all()
        return seconds

    def wake(self) -> None:
        with self._new_jpeg:
            self._new_jpeg.notify_all()

    def next_jpeg(self, after: int, timeout: float) -> Optional[Encoded]:
        """The newest JPEG once it is newer than ``after`` (a seq), or None after ``timeout`` or at close."""
        deadline = time.monotonic() + timeout
        with self._new_jpeg:
            while not self.view.closing:
                encoded = self.encoded
                if encoded is not None and encoded.seq > after:
                    return encoded
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._new_jpeg.wait(left)
        return None

    def snapshot(self) -> Optional[Encoded]:
        """A JPEG of the newest frames: the shared one if it is current, else one encoded for this request."""
        encoded = self.encoded
        if self.current() or all(latest is None for latest in self.frames()):  # no frame yet: nothing to wait for
            return encoded
        self.viewer(+1)
        try:
            return self.next_jpeg(encoded.seq if encoded is not None else 0, SNAPSHOT_WAIT_S)
        finally:
            self.viewer(-1)


class LiveView:
    """The state the pages are made from (a :class:`Channel` per source), its encoder, and its server."""

    def __init__(self, options: ServeOptions, sources: Sequence[str], classifier: Any, metrics: Any = None,
                 feed_metrics: bool = False) -> None:
        from edge import __version__

        self.options = options
        self.channels = {name: Channel(name) for name in sources}
        self.pictures = {name: Picture([channel], self) for name, channel in self.channels.items()}
        self.mosaic = Picture(list(self.channels.values()), self) if len(self.channels) > 1 else None
        self.metrics = metrics
        self._feed_metrics = feed_metrics  # True when the registry is ours alone (no --metrics-port)
        spec = classifier.spec
        self.model: Dict[str, Any] = {
            "file": options.model, "name": Path(options.model).name, "arch": spec.arch, "precision": spec.precision,
            "labels": spec.num_classes, "input": spec.input_side, "provider": str(classifier.backend.provider),
            "sha256": None}
        self.version = __version__
        self.started = time.time()
        self.page = page_html("edge.sinks", PAGE)
        self.events: Deque[Any] = deque(maxlen=EVENTS_KEPT)  # (seq, record) per label change, every source's
        self._event_seq = 0
        self.encodes = 0
        self.encode_s = 0.0  # CPU-side seconds spent scaling, drawing and encoding, in all
        self._wanted = threading.Event()
        self._closing = threading.Event()
        self.server: Optional[GuardedServer] = None
        self.review_dir: Optional[Path] = None  # --collect DIR: the /review page (edge.collect.reviewpage)
        self.labels = tuple(getattr(spec, "labels", ()))
        self._encoder = threading.Thread(target=self._encode_loop, name="edge-live-encode", daemon=True)
        threading.Thread(target=self._hash_model, name="edge-live-sha256", daemon=True).start()

    @classmethod
    def open(cls, options: Optional[ServeOptions], sources: Sequence[str], classifier: Any,
             metrics: Any = None) -> "Optional[LiveView]":
        """The view serving on ``options.address``; None without ``--serve``. ``sources``: their names, as the
        loop's results carry them. ``metrics``: the ``--metrics-port`` registry to serve too (else one of its own,
        fed here, when prometheus_client is installed)."""
        if options is None:
            return None
        feed = False
        if metrics is None:
            try:
                from edge.sinks.metrics import Metrics, MetricsError

                metrics = Metrics(sources, model=options.model, arch=classifier.spec.arch,
                                  precision=classifier.spec.precision, provider=str(classifier.backend.provider),
                                  version=_version())
                feed = True
            except MetricsError:  # no prometheus_client: /metrics says which extra to install
                metrics = None
        view = cls(options, sources, classifier, metrics, feed)
        view.serve()
        return view

    def serve(self) -> None:
        self.server = GuardedServer(self.options.address, _handler(self), "--serve")
        self._encoder.start()
        self.server.start("edge-live")
        url = Address(self.server.server_name, self.server.port).url
        log.info("live view on %s/ (%s)", url, "token required" if self.server.token else "this machine only")

    def watch(self, source: str, grabber: Any) -> None:
        """Read a source's grabber's drop and reconnect counts when asked."""
        channel = self.channels[source]
        channel.dropped = lambda: grabber.dropped
        channel.reconnects = lambda: grabber.reconnects
        if self._feed_metrics and self.metrics is not None:
            self.metrics.watch(source, channel.dropped, channel.reconnects)

    # -- the loop's side: references and counters only

    def write(self, result: Any) -> None:
        """The loop's sink call (``edge.sinks.Result``): hand the frame over."""
        self.frame(result.name, result.frame.image, result.record, result.prediction, result.stages, result.age_ms,
                   result.fps)

    def frame(self, source: str, image_bgr: Any, record: Dict[str, Any], prediction: Any,
              stages_ms: Dict[str, float], age_ms: float, fps: float) -> None:
        """Hand over a classified frame of ``source``; never waits and never encodes."""
        channel = self.channels.get(source)
        if channel is None:
            return
        channel.latest = Latest(image_bgr, prediction, record["frame"], record["time"], fps, age_ms, stages_ms)
        if self._feed_metrics and self.metrics is not None:
            self.metrics.frame(source, prediction.label, prediction.index, prediction.score, stages_ms, age_ms, fps)
        if prediction.label != channel.last_label:
            channel.last_label = prediction.label
            self._event_seq += 1
            self.events.append((self._event_seq, {"source": source, "frame": record["frame"], "time": record["time"],
                                                  "label": prediction.label, "score": round(prediction.score, 4)}))

    def close(self) -> None:
        self._closing.set()
        self._wanted.set()
        for picture in self.all_pictures():
            picture.wake()
        if self.server is not None:
            self.server.close()
        if self._feed_metrics and self.metrics is not None:
            self.metrics.close()

    # -- the servers' side

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less when the view closes (then True)."""
        return self._closing.wait(seconds)

    def wake_encoder(self) -> None:
        """A picture is wanted: the encoder, idle while none is, looks again now."""
        self._wanted.set()

    @property
    def viewers(self) -> int:
        """Connections watching a picture (a stream, or a snapshot waiting for its JPEG), every picture's."""
        return sum(picture.viewers for picture in self.all_pictures())

    def all_pictures(self) -> List[Picture]:
        return list(self.pictures.values()) + ([self.mosaic] if self.mosaic is not None else [])

    def picture(self, source: Optional[str]) -> Optional[Picture]:
        """A source's picture; without a name the only source's, or the mosaic of several; None: no such source."""
        if source is None:
            return self.mosaic or next(iter(self.pictures.values()))
        return self.pictures.get(source)

    def _encode_loop(self) -> None:
        period = 1.0 / self.options.fps
        while not self.closing:
            wanted = [picture for picture in self.all_pictures() if picture.viewers > 0]
            if not wanted:
                self._wanted.wait(1.0)
                self._wanted.clear()
                continue
            started = time.monotonic()
            spent = [seconds for seconds in (picture.refresh() for picture in wanted) if seconds is not None]
            self.encodes += len(spent)
            self.encode_s += sum(spent)
            if spent:
                self._closing.wait(max(0.0, period - (time.monotonic() - started)))
            else:
                self._closing.wait(min(period, 0.02))  # no new frame yet: look again soon

    def _hash_model(self) -> None:
        digest = hashlib.sha256()
        try:
            with open(self.options.model, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
                    if self.closing:
                        return
            self.model["sha256"] = digest.hexdigest()
        except OSError as exc:
            self.model["sha256"] = f"unreadable: {exc.strerror or exc}"

    def model_changed(self, facts: Dict[str, Any]) -> None:
        """A model swapped in or refused (``edge.model.swap``): ``/api/status``'s ``model`` block follows it."""
        self.model.update({key: facts.get(key) for key in ("sha256", "file", "arch", "precision", "labels", "swaps",
                                                          "refusals", "last_swap", "last_refusal")})

    def changes(self, source: Optional[str] = None) -> List[Dict[str, Any]]:
        """The newest label changes first (of one source, or of all), at most ``HISTORY``."""
        found = [change for _, change in reversed(self.events) if source is None or change["source"] == source]
        return found[:HISTORY]

    def status(self, source: Optional[str] = None) -> Dict[str, Any]:
        """What the page shows, as ``/api/status`` returns it: one source's frame (the first, or ``source``), and
        a line for every source."""
        channel = self.channels[source] if source is not None else next(iter(self.channels.values()))
        encoded = self.picture(source).encoded
        several = source is None and len(self.channels) > 1
        facts: Dict[str, Any] = {
            "source": channel.name, "sources": [c.summary() for c in self.channels.values()],
            "model": dict(self.model), "version": self.version,
            "started": round(self.started, 3), "now": round(time.time(), 3),
            "health": channel.health(),
            "history": self.changes(None if several else channel.name),
            "serve": {"viewers": self.viewers, "fps": self.options.fps, "max_side": MAX_SIDE,
                      "encodes": self.encodes, "encode_ms": round(encoded.encode_ms, 2) if encoded else None,
                      "connections": self.server.connections if self.server is not None else 0,
                      "refused": self.server.refused if self.server is not None else 0},
        }
        facts.update(frame_facts(channel.latest))
        return facts


def frame_facts(latest: Optional[Latest]) -> Dict[str, Any]:
    """The newest frame's result: number, capture time, label, top-k, FPS, age and per-stage ms."""
    if latest is None:
        return {"frame": None}
    prediction = latest.prediction
    return {"frame": latest.number, "time": latest.captured, "label": prediction.label, "index": prediction.index,
            "score": round(prediction.score, 6), "topk": [k.to_dict() for k in prediction.topk],
            "fps": round(latest.fps, 2), "age_ms": round(latest.age_ms, 1),
            "ms": {name: round(ms, 3) for name, ms in latest.stages_ms.items()}}


def draw_picture(frames: Sequence[Optional[Latest]], names: Sequence[str]) -> Any:
    """One source's frame with its label, at most MAX_SIDE on its longest side; several as a grid of tiles
    (``TILE_ASPECT``, each frame fitted into its tile), each with its name and label."""
    import cv2
    import numpy as np

    from edge.sinks.overlay import draw_label, draw_text

    if len(frames) == 1:
        return draw_label(fit(frames[0].image, MAX_SIDE, MAX_SIDE), frames[0].prediction, frames[0].fps or None)
    columns = int(math.ceil(math.sqrt(len(frames))))
    rows = int(math.ceil(len(frames) / columns))
    tile_w = MAX_SIDE // columns
    tile_h = int(tile_w / TILE_ASPECT)
    grid = np.zeros((rows * tile_h, columns * tile_w, 3), np.uint8)
    for place, (latest, name) in enumerate(zip(frames, names)):
        tile = grid[place // columns * tile_h:(place // columns + 1) * tile_h,
                    place % columns * tile_w:(place % columns + 1) * tile_w]
        if latest is None:
            tile[:] = draw_text(tile, f"{name}: waiting for a frame")
            continue
        image = fit(latest.image, tile_w, tile_h)
        top, left = (tile_h - image.shape[0]) // 2, (tile_w - image.shape[1]) // 2
        tile[top:top + image.shape[0], left:left + image.shape[1]] = image
        tile[:] = draw_label(tile, latest.prediction, latest.fps or None, name)
        cv2.rectangle(tile, (0, 0), (tile_w - 1, tile_h - 1), (60, 60, 60), 1)
    return grid


def fit(image: Any, width: int, height: int) -> Any:
    """The image scaled down (never up) to fit ``width`` x ``height``, its aspect kept: averaged down by a whole
    factor first where it shrinks to less than half (INTER_AREA's fast integer path: 0.6 ms for 720p to half,
    where its general path takes 5 ms), then bilinear for the rest (every source pixel still weighs in)."""
    import cv2

    rows, columns = image.shape[:2]
    scale = min(width / columns, height / rows)
    if scale >= 1:
        return image
    factor = int(1 / scale)
    if factor >= 2:
        image = cv2.resize(image, (columns // factor, rows // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (max(1, int(columns * scale)), max(1, int(rows * scale))),
                      interpolation=cv2.INTER_LINEAR)


def jpeg_of(image: Any) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("imencode failed")
    return data.tobytes()


def _handler(view: LiveView) -> Any:
    class Handler(LiveHandler):
        live = view

    return Handler


class LiveHandler(GuardedHandler):
    live: LiveView

    def get(self, path: str, query: Dict[str, List[str]]) -> None:
        route = ROUTES.get(path)
        if route is None:
            self.reply(404, "not found: try /\n")
            return
        route(self, query)

    def page(self, query: Dict[str, List[str]]) -> None:
        self.reply(200, self.live.page, "text/html; charset=utf-8",
                   {"Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; "
                                               "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"})

    def chosen(self, query: Dict[str, List[str]]) -> Tuple[bool, Optional[str]]:
        """``?source=NAME``: (True, NAME or None when not given); (False, None) after a 404 for a name unknown."""
        name = (query.get("source") or [None])[0]
        if name is None or name in self.live.channels:
            return True, name
        self.reply(404, f"no source named {name!r}; the sources: {', '.join(self.live.channels)}\n")
        return False, None

    def status(self, query: Dict[str, List[str]]) -> None:
        known, source = self.chosen(query)
        if known:
            self.reply(200, json.dumps(_finite(self.live.status(source)), ensure_ascii=False), "application/json")

    def metrics(self, query: Dict[str, List[str]]) -> None:
        if self.live.metrics is None:
            self.reply(501, "/metrics needs prometheus_client: pip install '.[metrics]' in the edge-classifier "
                            "checkout\n")
            return
        body, content_type = self.live.metrics.exposition()
        self.reply(200, body, content_type)

    def snapshot(self, query: Dict[str, List[str]]) -> None:
        known, source = self.chosen(query)
        if not known:
            return
        encoded = self.live.picture(source).snapshot()
        if encoded is None:
            self.reply(503, "no frame yet\n", extra={"Retry-After": "1"})
            return
        self.reply(200, encoded.jpeg, "image/jpeg", {"X-Frame": str(encoded.number),
                                                     "X-Captured": f"{encoded.captured:.3f}"})

    def stream(self, query: Dict[str, List[str]]) -> None:
        known, source = self.chosen(query)
        if not known:
            return
        live, picture = self.live, self.live.picture(source)
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_common_headers()
        self.end_headers()
        picture.viewer(+1)
        try:
            # a JPEG left from earlier viewers is stale: wait for the next one
            encoded = picture.encoded
            seq = encoded.seq if encoded is not None and not picture.current() else 0
            while not live.closing:
                encoded = picture.next_jpeg(seq, KEEPALIVE_S)
                if encoded is None:
                    continue
                seq = encoded.seq
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\nX-Frame: %d\r\n"
                                 b"X-Captured: %.3f\r\n\r\n" % (len(encoded.jpeg), encoded.number, encoded.captured)
                                 + encoded.jpeg + b"\r\n")
        finally:
            picture.viewer(-1)

    def events(self, query: Dict[str, List[str]]) -> None:
        """Server-sent events: ``change`` per label change; with ``?every=frame`` also ``frame``, each source's at
        most ``--serve-fps`` a second. ``?source=NAME``: that source's only."""
        known, source = self.chosen(query)
        if not known:
            return
        live = self.live
        every_frame = (query.get("every") or [""])[0] == "frame"
        channels = [live.channels[source]] if source is not None else list(live.channels.values())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_common_headers()
        self.end_headers()
        period = 1.0 / live.options.fps
        last_event = live.events[-1][0] if live.events else 0
        last_frame: Dict[str, Optional[Latest]] = {}
        next_send: Dict[str, float] = {}
        quiet_until = time.monotonic()
        self.wfile.write(b"retry: 2000\n\n")
        while not live.closing:
            out = []
            for seq, change in tuple(live.events):
                if seq > last_event:
                    last_event = seq
                    if source is None or change["source"] == source:
                        out.append(_event("change", change))
            now = time.monotonic()
            for channel in channels if every_frame else ():
                latest = channel.latest
                if latest is not None and latest is not last_frame.get(channel.name) and \
                        now >= next_send.get(channel.name, 0.0):
                    out.append(_event("frame", dict(frame_facts(latest), source=channel.name,
                                                    health=channel.health())))
                    last_frame[channel.name], next_send[channel.name] = latest, now + period
            if not out and now - quiet_until >= KEEPALIVE_S:
                out.append(b": keep-alive\n\n")
            if out:
                self.wfile.write(b"".join(out))
                quiet_until = now
            live.wait(min(period, 0.1))

    # -- /review (with --collect): ids in, JSON out, through edge.collect.folder as edge-collect does

    def review(self, query: Dict[str, List[str]]) -> None:
        from edge.collect import reviewpage

        if self.live.review_dir is None:
            self.reply(404, "/review needs --collect DIR\n")
            return
        self.reply(200, page_html("edge.collect", reviewpage.PAGE), "text/html; charset=utf-8",
                   {"Content-Security-Policy": PAGE_POLICY})

    def review_list(self, query: Dict[str, List[str]]) -> None:
        from edge.collect import reviewpage

        if self.live.review_dir is None:
            self.reply(404, "/api/review needs --collect DIR\n")
            return
        listing = reviewpage.listing(self.live.review_dir, self.live.labels)
        self.reply(200, json.dumps(_finite(listing), ensure_ascii=False), "application/json")

    def review_frame(self, query: Dict[str, List[str]]) -> None:
        from edge.collect import reviewpage

        given = (query.get("id") or [""])[0]
        jpeg = reviewpage.frame_jpeg(self.live.review_dir, given) if self.live.review_dir is not None else None
        if jpeg is None:
            self.reply(404, "no such unreviewed frame\n")
            return
        self.reply(200, jpeg, "image/jpeg")

    def post(self, path: str, query: Dict[str, Any], body: bytes) -> None:
        from edge.collect import reviewpage

        if path != "/api/review/decide" or self.live.review_dir is None:
            self.reply(404, "not found\n")
            return
        code, answer = reviewpage.apply(self.live.review_dir, body)
        self.reply(code, json.dumps(answer, ensure_ascii=False), "application/json")


PAGE_POLICY = ("default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
               "connect-src 'self'; frame-ancestors 'none'")
ROUTES = {"/": LiveHandler.page, "/index.html": LiveHandler.page, "/api/status": LiveHandler.status,
          "/api/events": LiveHandler.events, "/metrics": LiveHandler.metrics, "/snapshot.jpg": LiveHandler.snapshot,
          "/stream.mjpg": LiveHandler.stream, "/review": LiveHandler.review, "/api/review": LiveHandler.review_list,
          "/api/review/frame": LiveHandler.review_frame}


def page_html(package: str, name: str) -> bytes:
    """A page (package data) with the script every page shares (``SHARED_SCRIPT``) in place of its
    ``<script src="page.js">``: one request per page, and no script file to guard."""
    from edge.resources import package_text

    shared = f"<script>\n{package_text('edge.sinks', SHARED_SCRIPT)}</script>"
    return package_text(package, name).replace(f'<script src="{SHARED_SCRIPT}"></script>', shared).encode("utf-8")


def _event(kind: str, record: Dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(_finite(record), ensure_ascii=False)}\n\n".encode("utf-8")


def _finite(value: Any) -> Any:
    """JSON that browsers parse: NaN and infinities (a broken model's scores) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _version() -> str:
    from edge import __version__

    return __version__
