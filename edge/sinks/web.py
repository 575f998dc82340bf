"""The live view (``--serve [HOST:]PORT``): what a headless Jetson sees, in a browser, from one HTTP server.

``edge.cli`` adds the flags (``add_serve_arguments``) and checks them (``check_serve_arguments``);
``edge.pipeline`` opens the view before the first frame and hands each frame over::

    options = ServeOptions.from_args(args)                                  # None without --serve
    live = LiveView.open(options, "csi://0", classifier, metrics=None)      # ServeError: exit 2
    live.watch(grabber)                                                     # drops, reconnects
    live.frame(image_bgr, record, prediction, stages_ms, age_ms, fps)       # per frame: a reference, no work
    live.close()

Served (by ``edge.sinks.httpd``: loopback unless told, a token beyond it, bounded connections):

    /              live.html (package data): the picture, label, top-k, label changes, FPS, age, stages, model
    /stream.mjpg   the annotated picture, multipart/x-mixed-replace; each part has X-Frame and X-Captured
    /snapshot.jpg  one annotated JPEG
    /api/status    the same facts as JSON
    /api/events    server-sent events: one JSON record per label change (``?every=frame``: also the
                   newest frame, at most ``--serve-fps`` a second)
    /metrics       the Prometheus text of ``--metrics-port`` (the same registry when both are given)

It costs nothing unwatched: the loop thread only stores a reference to its frame. One encoder thread
runs while at least one picture is wanted: at most ``--serve-fps`` a second it scales the newest frame
to ``MAX_SIDE``, draws the label and encodes one JPEG that every viewer shares; each viewer's thread
sends the newest JPEG when its previous one has gone out, so a slow viewer skips frames for itself.
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
from typing import Any, Deque, Dict, List, NamedTuple, Optional

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
    number: int
    captured: float
    encode_ms: float


class LiveView:
    """The state the pages are made from, its encoder, and its server."""

    def __init__(self, options: ServeOptions, source: str, classifier: Any, metrics: Any = None,
                 feed_metrics: bool = False) -> None:
        from edge import __version__
        from edge.resources import package_text

        self.options = options
        self.source = source
        self.metrics = metrics
        self._feed_metrics = feed_metrics  # True when the registry is ours alone (no --metrics-port)
        spec = classifier.spec
        self.model: Dict[str, Any] = {
            "file": options.model, "name": Path(options.model).name, "arch": spec.arch, "precision": spec.precision,
            "labels": spec.num_classes, "input": spec.input_side, "provider": str(classifier.backend.provider),
            "sha256": None}
        self.version = __version__
        self.started = time.time()
        self.page = package_text("edge.sinks", PAGE).encode("utf-8")
        self.latest: Optional[Latest] = None
        self.history: Deque[Dict[str, Any]] = deque(maxlen=HISTORY)
        self.events: Deque[Any] = deque(maxlen=EVENTS_KEPT)  # (seq, record) per label change
        self._event_seq = 0
        self._last_label: Optional[str] = None
        self._dropped = lambda: 0
        self._reconnects = lambda: 0
        self.encoded: Optional[Encoded] = None
        self.encodes = 0
        self.encode_s = 0.0  # CPU-side seconds spent scaling, drawing and encoding, in all
        self._viewers = 0
        self._viewers_lock = threading.Lock()
        self._wanted = threading.Event()
        self._new_jpeg = threading.Condition()
        self._closing = threading.Event()
        self.server: Optional[GuardedServer] = None
        self.review_dir: Optional[Path] = None  # --collect DIR: the /review page (edge.collect.reviewpage)
        self.labels = tuple(getattr(spec, "labels", ()))
        self._encoder = threading.Thread(target=self._encode_loop, name="edge-live-encode", daemon=True)
        threading.Thread(target=self._hash_model, name="edge-live-sha256", daemon=True).start()

    @classmethod
    def open(cls, options: Optional[ServeOptions], source: str, classifier: Any,
             metrics: Any = None) -> "Optional[LiveView]":
        """The view serving on ``options.address``; None without ``--serve``. ``metrics``: the ``--metrics-port``
        registry to serve too (else one of its own, fed here, when prometheus_client is installed)."""
        if options is None:
            return None
        feed = False
        if metrics is None:
            try:
                from edge.sinks.metrics import Metrics, MetricsError

                metrics = Metrics(source=source, model=options.model, arch=classifier.spec.arch,
                                  precision=classifier.spec.precision, provider=str(classifier.backend.provider),
                                  version=_version())
                feed = True
            except MetricsError:  # no prometheus_client: /metrics says which extra to install
                metrics = None
        view = cls(options, source, classifier, metrics, feed)
        view.serve()
        return view

    def serve(self) -> None:
        self.server = GuardedServer(self.options.address, _handler(self), "--serve")
        self._encoder.start()
        self.server.start("edge-live")
        url = Address(self.server.server_name, self.server.port).url
        log.info("live view on %s/ (%s)", url, "token required" if self.server.token else "this machine only")

    def watch(self, grabber: Any) -> None:
        """Read the grabber's drop and reconnect counts when asked."""
        self._dropped = lambda: grabber.dropped
        self._reconnects = lambda: grabber.reconnects
        if self._feed_metrics and self.metrics is not None:
            self.metrics.watch(self._dropped, self._reconnects)

    # -- the loop's side: references and counters only

    def write(self, result: Any) -> None:
        """The loop's sink call (``edge.sinks.Result``): hand the frame over."""
        self.frame(result.frame.image, result.record, result.prediction, result.stages, result.age_ms, result.fps)

    def frame(self, image_bgr: Any, record: Dict[str, Any], prediction: Any, stages_ms: Dict[str, float],
              age_ms: float, fps: float) -> None:
        """Hand over a classified frame; never waits and never encodes."""
        self.latest = Latest(image_bgr, prediction, record["frame"], record["time"], fps, age_ms, stages_ms)
        if self._feed_metrics and self.metrics is not None:
            self.metrics.frame(prediction.label, prediction.index, prediction.score, stages_ms, age_ms, fps)
        if prediction.label != self._last_label:
            self._last_label = prediction.label
            change = {"frame": record["frame"], "time": record["time"], "label": prediction.label,
                      "score": round(prediction.score, 4)}
            self.history.append(change)
            self._event_seq += 1
            self.events.append((self._event_seq, change))

    def close(self) -> None:
        self._closing.set()
        self._wanted.set()
        with self._new_jpeg:
            self._new_jpeg.notify_all()
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

    def viewer(self, delta: int) -> None:
        with self._viewers_lock:
            self._viewers += delta
            if self._viewers > 0:
                self._wanted.set()

    @property
    def viewers(self) -> int:
        return self._viewers

    def next_jpeg(self, after: int, timeout: float) -> Optional[Encoded]:
        """The newest JPEG once it is newer than ``after`` (a seq), or None after ``timeout`` or at close."""
        deadline = time.monotonic() + timeout
        with self._new_jpeg:
            while not self.closing:
                encoded = self.encoded
                if encoded is not None and encoded.seq > after:
                    return encoded
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._new_jpeg.wait(left)
        return None

    def snapshot(self) -> Optional[Encoded]:
        """A JPEG of the newest frame: the shared one if it is current, else one encoded for this request."""
        encoded, latest = self.encoded, self.latest
        if encoded is not None and latest is not None and encoded.number == latest.number:
            return encoded
        self.viewer(+1)
        try:
            return self.next_jpeg(encoded.seq if encoded is not None else 0, SNAPSHOT_WAIT_S)
        finally:
            self.viewer(-1)

    def _encode_loop(self) -> None:
        import cv2  # here, not at the top: edge.cli imports this module before it checks that OpenCV is there

        period = 1.0 / self.options.fps
        encoded_number = None
        while not self.closing:
            if self._viewers <= 0:
                self._wanted.wait(1.0)
                self._wanted.clear()
                continue
            started = time.monotonic()
            latest = self.latest
            if latest is not None and latest.number != encoded_number:
                try:
                    jpeg = encode(latest)
                except (cv2.error, ValueError) as exc:  # a frame OpenCV cannot encode: skip it, keep serving
                    log.debug("live view: cannot encode frame %d: %s", latest.number, exc)
                else:
                    encoded_number = latest.number
                    self.encodes += 1
                    self.encode_s += time.monotonic() - started
                    with self._new_jpeg:
                        seq = self.encoded.seq + 1 if self.encoded is not None else 1
                        self.encoded = Encoded(seq, jpeg, latest.number, latest.captured,
                                               (time.monotonic() - started) * 1e3)
                        self._new_jpeg.notify_all()
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

    def health(self) -> Dict[str, int]:
        return {"dropped": self._dropped(), "reconnects": self._reconnects()}

    def status(self) -> Dict[str, Any]:
        """What the page shows, as ``/api/status`` returns it."""
        latest, encoded = self.latest, self.encoded
        facts: Dict[str, Any] = {
            "source": self.source, "model": dict(self.model), "version": self.version,
            "started": round(self.started, 3), "now": round(time.time(), 3),
            "health": self.health(),
            "history": list(self.history)[::-1],
            "serve": {"viewers": self._viewers, "fps": self.options.fps, "max_side": MAX_SIDE,
                      "encodes": self.encodes, "encode_ms": round(encoded.encode_ms, 2) if encoded else None,
                      "connections": self.server.connections if self.server is not None else 0,
                      "refused": self.server.refused if self.server is not None else 0},
        }
        facts.update(frame_facts(latest))
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


def encode(latest: Latest) -> bytes:
    """The frame scaled to at most MAX_SIDE, with the label drawn on, as a JPEG."""
    import cv2

    from edge.sinks.overlay import draw_label

    image = latest.image
    height, width = image.shape[:2]
    scale = MAX_SIDE / max(height, width)
    if scale < 1:
        image = cv2.resize(image, (max(1, int(round(width * scale))), max(1, int(round(height * scale)))),
                           interpolation=cv2.INTER_AREA)
    drawn = draw_label(image, latest.prediction, latest.fps or None)
    ok, data = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
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

    def status(self, query: Dict[str, List[str]]) -> None:
        self.reply(200, json.dumps(_finite(self.live.status()), ensure_ascii=False), "application/json")

    def metrics(self, query: Dict[str, List[str]]) -> None:
        if self.live.metrics is None:
            self.reply(501, "/metrics needs prometheus_client: pip install '.[metrics]' in the edge-classifier "
                            "checkout\n")
            return
        body, content_type = self.live.metrics.exposition()
        self.reply(200, body, content_type)

    def snapshot(self, query: Dict[str, List[str]]) -> None:
        encoded = self.live.snapshot()
        if encoded is None:
            self.reply(503, "no frame yet\n", extra={"Retry-After": "1"})
            return
        self.reply(200, encoded.jpeg, "image/jpeg", {"X-Frame": str(encoded.number),
                                                     "X-Captured": f"{encoded.captured:.3f}"})

    def stream(self, query: Dict[str, List[str]]) -> None:
        live = self.live
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_common_headers()
        self.end_headers()
        live.viewer(+1)
        try:
            # a JPEG left from earlier viewers is stale: wait for the next one
            encoded, latest = live.encoded, live.latest
            seq = encoded.seq if encoded is not None and latest is not None and encoded.number != latest.number else 0
            while not live.closing:
                encoded = live.next_jpeg(seq, KEEPALIVE_S)
                if encoded is None:
                    continue
                seq = encoded.seq
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\nX-Frame: %d\r\n"
                                 b"X-Captured: %.3f\r\n\r\n" % (len(encoded.jpeg), encoded.number, encoded.captured)
                                 + encoded.jpeg + b"\r\n")
        finally:
            live.viewer(-1)

    def events(self, query: Dict[str, List[str]]) -> None:
        """Server-sent events: ``change`` per label change; with ``?every=frame`` also ``frame``, capped."""
        live = self.live
        every_frame = (query.get("every") or [""])[0] == "frame"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_common_headers()
        self.end_headers()
        period = 1.0 / live.options.fps
        last_event = live.events[-1][0] if live.events else 0
        last_frame = None
        next_send = quiet_until = time.monotonic()
        self.wfile.write(b"retry: 2000\n\n")
        while not live.closing:
            out = []
            for seq, change in tuple(live.events):
                if seq > last_event:
                    out.append(_event("change", change))
                    last_event = seq
            now = time.monotonic()
            latest = live.latest
            if every_frame and now >= next_send and latest is not None and latest.number != last_frame:
                facts = frame_facts(latest)
                facts["health"] = live.health()
                out.append(_event("frame", facts))
                last_frame, next_send = latest.number, now + period
            if not out and now - quiet_until >= KEEPALIVE_S:
                out.append(b": keep-alive\n\n")
            if out:
                self.wfile.write(b"".join(out))
                quiet_until = now
            live.wait(min(period, 0.1))


    # -- /review (with --collect): ids in, JSON out, through edge.collect.folder as edge-collect does

    def review(self, query: Dict[str, List[str]]) -> None:
        from edge.resources import package_text
        from edge.collect import reviewpage

        if self.live.review_dir is None:
            self.reply(404, "/review needs --collect DIR\n")
            return
        self.reply(200, package_text("edge.collect", reviewpage.PAGE), "text/html; charset=utf-8",
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
