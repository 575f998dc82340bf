"""Prometheus metrics of the capture loop, served over HTTP for a scraper (``--metrics-port``).

    metrics = Metrics(["door", "yard"], model="m.onnx", arch="mobilenet_v2", provider="CUDAExecutionProvider")
    metrics.serve("127.0.0.1", 9101)             # MetricsError: the port is taken (exit 2)
    metrics.frame("door", prediction.label, prediction.index, prediction.score, stages_ms, age_ms, fps)
    metrics.watch("door", lambda: grabber.dropped, lambda: grabber.reconnects)  # read at scrape time
    metrics.watch_mqtt(publisher.stats)
    metrics.close()

Every series of a source carries a ``source`` label (the name its ``--json`` lines carry), one source too,
so a dashboard made for one camera works unchanged for several.

Uses the prometheus_client library (its registry, histograms and text exposition); the HTTP server is
``edge.sinks.httpd``'s (the standard library's, hardened), so it starts and stops the same way on every
version of it (0.17 on Python 3.6); ``--serve`` serves the same registry at the live view's ``/metrics``.
The served names (all prefixed ``edge_classify_``) are listed in ``METRIC_NAMES`` and the README.
Counts kept elsewhere (the grabber's drops and reconnects, the MQTT publisher's) are read at scrape
time by a collector, so the loop pays only for the histograms.
"""


import logging
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

PREFIX = "edge_classify"
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
AGE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
METRIC_NAMES = (
    "edge_classify_info", "edge_classify_frames_total", "edge_classify_fps", "edge_classify_frame_age_seconds",
    "edge_classify_stage_seconds", "edge_classify_dropped_frames_total", "edge_classify_reconnects_total",
    "edge_classify_prediction_score", "edge_classify_mqtt_connected", "edge_classify_mqtt_queued",
    "edge_classify_mqtt_sent_total", "edge_classify_mqtt_dropped_total", "edge_classify_mqtt_connects_total",
)


class MetricsError(RuntimeError):
    """The endpoint cannot be served (port taken, bad address) or the library is missing: one line, exit 2."""


class Metrics:
    """The loop's metrics in a registry of their own, and (after ``serve``) an HTTP endpoint for them."""

    def __init__(self, sources: Sequence[str], **info: str) -> None:
        prometheus = _import_prometheus()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._prometheus = prometheus
        self.registry = CollectorRegistry()
        frames = Counter(f"{PREFIX}_frames", "Frames classified", ["source"], registry=self.registry)
        fps = Gauge(f"{PREFIX}_fps", "Frames per second since the first frame", ["source"], registry=self.registry)
        age = Histogram(f"{PREFIX}_frame_age_seconds", "From capture to label (the lag a user sees)", ["source"],
                        buckets=AGE_BUCKETS, registry=self.registry)
        self._stage = Histogram(f"{PREFIX}_stage_seconds", "Time per frame in each stage of the loop",
                                ["source", "stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        # Each source's series exist from the start (0 frames is a fact a dashboard should see).
        self._series = {name: (frames.labels(name), fps.labels(name), age.labels(name)) for name in sources}
        self._stage_children: Dict[Tuple[str, str], Any] = {}
        self._live = _LiveCollector(info, sources)
        self.registry.register(self._live)
        self._server: Any = None  # an edge.sinks.httpd.GuardedServer once serving

    def watch(self, source: str, dropped: Callable[[], int], reconnects: Callable[[], int]) -> None:
        """Where a source's counts kept elsewhere (its grabber's drops and reconnects) are read at scrape time."""
        self._live.counts[source] = (dropped, reconnects)

    def watch_mqtt(self, stats: Any) -> None:
        """The MQTT publisher's ``Stats``, read at scrape time."""
        self._live.mqtt = stats

    def frame(self, source: str, label: str, index: Optional[int], score: float, stages_ms: Dict[str, float],
              age_ms: float, fps: float) -> None:
        series = self._series.get(source)
        if series is None:  # not a source named at the start: nothing to label it with
            return
        frames, rate, age = series
        frames.inc()
        rate.set(fps)
        age.observe(age_ms / 1e3)
        for stage, ms in stages_ms.items():
            child = self._stage_children.get((source, stage))
            if child is None:
                child = self._stage_children[source, stage] = self._stage.labels(source, stage)
            child.observe(ms / 1e3)
        # A lone surrogate in a label (from the model's metadata) would fail every scrape's UTF-8 encoding.
        self._live.predictions[source] = (label.encode("utf-8", "backslashreplace").decode("utf-8"), index, score)

    def model_changed(self, facts: Dict[str, Any]) -> None:
        """The running model's sha256 and the swap and refusal counts (``edge.model.swap.ModelSlot.status``)."""
        self._live.model = (facts.get("sha256") or "", int(facts.get("swaps", 0)), int(facts.get("refusals", 0)))

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` (any path, as the library's own server does) on a daemon thread.

        The server is ``edge.sinks.httpd``'s: loopback unless ``host`` says otherwise (IPv6 too), then only with
        ``$EDGE_SERVE_TOKEN``; a bounded number of connections, each with a deadline.
        """
        from edge.sinks.httpd import Address, GuardedHandler, GuardedServer, ServeError, check_host

        exposition = self.exposition

        class Handler(GuardedHandler):
            def get(self, path: str, query: Dict[str, Any]) -> None:
                body, content_type = exposition()
                self.reply(200, body, content_type)

        try:
            self._server = GuardedServer(Address(check_host(host, "--metrics-host"), port), Handler,
                                         "--metrics-port")
        except ServeError as exc:
            raise MetricsError(str(exc)) from None
        self._server.start("metrics")
        log.info("metrics on %s/metrics", Address(self._server.server_name, self._server.port).url)

    def exposition(self) -> Tuple[bytes, str]:
        """The registry in Prometheus' text format, and its content type (for any server that serves it)."""
        return self._prometheus.generate_latest(self.registry), self._prometheus.CONTENT_TYPE_LATEST

    @property
    def port(self) -> Optional[int]:
        return self._server.port if self._server is not None else None

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()


class _LiveCollector:
    """Values read when scraped: the current label, drops and reconnects, the MQTT publisher's counts."""

    def __init__(self, info: Dict[str, str], sources: Sequence[str]) -> None:
        self.info = dict(info)
        self.sources = list(sources)
        self.predictions: Dict[str, tuple] = {}  # per source: its newest frame's (label, index, score)
        self.counts: Dict[str, Tuple[Callable[[], int], Callable[[], int]]] = {}  # per source: (dropped, reconnects)
        self.mqtt: Optional[Any] = None
        self.model: Optional[tuple] = None  # (sha256, swaps, refusals) once a model slot reports

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        names = sorted(self.info)
        info = GaugeMetricFamily(f"{PREFIX}_info", "The model, where it runs, and each source (always 1)",
                                 labels=["source"] + names)
        dropped = CounterMetricFamily(f"{PREFIX}_dropped_frames", "Frames the grabber dropped (the loop was busy)",
                                      labels=["source"])
        reconnects = CounterMetricFamily(f"{PREFIX}_reconnects", "Times the camera or stream was reconnected",
                                         labels=["source"])
        score = GaugeMetricFamily(f"{PREFIX}_prediction_score", "Probability of the current label, by label",
                                  labels=["source", "label", "index"])
        for source in self.sources:
            info.add_metric([source] + [self.info[k] for k in names], 1)
            read_dropped, read_reconnects = self.counts.get(source, (_zero, _zero))
            dropped.add_metric([source], read_dropped())
            reconnects.add_metric([source], read_reconnects())
            prediction = self.predictions.get(source)
            if prediction is not None:  # one series a source: the label of its newest frame
                label, index, value = prediction
                score.add_metric([source, label, "" if index is None else str(index)], value)
        yield from (info, dropped, reconnects, score)
        if self.model is not None:
            sha256, swaps, refusals = self.model
            model = GaugeMetricFamily(f"{PREFIX}_model_info", "The running model's sha256 (always 1)",
                                      labels=["sha256"])
            model.add_metric([sha256], 1)
            yield model
            yield CounterMetricFamily(f"{PREFIX}_model_swaps", "Models swapped in while running", value=swaps)
            yield CounterMetricFamily(f"{PREFIX}_model_refusals", "New models refused (load or canary)",
                                      value=refusals)
        stats = self.mqtt
        if stats is not None:
            yield GaugeMetricFamily(f"{PREFIX}_mqtt_connected", "1 while connected to the MQTT broker",
                                    value=1 if stats.connected else 0)
            yield GaugeMetricFamily(f"{PREFIX}_mqtt_queued", "Messages spooled, not yet acknowledged by the broker",
                                    value=stats.queued)
            yield CounterMetricFamily(f"{PREFIX}_mqtt_sent", "Messages the broker acknowledged", value=stats.sent)
            yield CounterMetricFamily(f"{PREFIX}_mqtt_dropped", "Messages given up (queue or spool bound)",
                                      value=stats.dropped)
            yield CounterMetricFamily(f"{PREFIX}_mqtt_connects", "Connections made to the broker",
                                      value=stats.connects)


def _zero() -> int:
    return 0


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MetricsError("--metrics-port needs prometheus_client: pip install '.[metrics]' in the edge-classifier "
                           "checkout") from None
    return prometheus_client
