"""Results and health for remote systems: the loop's MQTT publishing and Prometheus metrics, behind their flags.

``edge.cli`` adds the flags (``add_telemetry_arguments``); ``edge.pipeline`` opens the outputs before the first
frame and hands each frame over::

    options = TelemetryOptions.from_args(args)                 # None without the flags
    telemetry = Telemetry.open(options, ["csi://0"], classifier, stop)  # TelemetryError: exit 2; stop: SIGTERM
    telemetry.watch("csi://0", grabber)
    telemetry.send(record, prediction, stages_ms, age_ms, fps, "csi://0")          # per frame, never blocks
    telemetry.close()

Both are optional extras (``.[mqtt]``, ``[metrics]``), imported only when their flag is
given. ``--mqtt-every`` decides which frames are published: ``change`` (the label changed, as the
console prints), ``frame`` (all) or ``N`` (every Nth); with ``change`` or ``N`` the newest result is
also re-sent after ``--mqtt-heartbeat`` seconds without a message, so a subscriber can tell a
steady scene from a dead camera.
"""


import argparse
import logging
import os
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from edge.errors import EdgeError

log = logging.getLogger("edge-classify")

DEFAULT_SPOOL_MB = 64.0
DEFAULT_HEARTBEAT_S = 60.0


class TelemetryError(EdgeError):
    """A telemetry flag that cannot work (missing extra, refused login, port taken): one line, exit 2."""


def add_telemetry_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MQTT and Prometheus (cameras, videos and streams)")
    group.add_argument("--mqtt", metavar="URL",
                       help="publish results to mqtt://host:1883/prefix (mqtts:// for TLS), QoS 1, to "
                            "<prefix>/<name>/label; user and password from $EDGE_MQTT_USERNAME/$EDGE_MQTT_PASSWORD")
    group.add_argument("--mqtt-every", type=_every, default="change", metavar="change|frame|N",
                       help="publish when the label changes (default), every frame, or every Nth frame")
    group.add_argument("--mqtt-heartbeat", type=float, default=DEFAULT_HEARTBEAT_S, metavar="S",
                       help=f"re-send the newest result after S seconds without a message (default "
                            f"{DEFAULT_HEARTBEAT_S:.0f}; 0: never)")
    group.add_argument("--mqtt-name", metavar="NAME", help="the topic level for this source (default: from it, "
                                                             "e.g. csi0, camera0, the video's name)")
    group.add_argument("--mqtt-ca", metavar="FILE", help="CA certificate for mqtts:// (default: the system's)")
    group.add_argument("--mqtt-spool", metavar="DIR",
                       help="where results wait while the broker is away (default: $STATE_DIRECTORY/mqtt, or "
                            "~/.local/state/edge-classify/mqtt/NAME)")
    group.add_argument("--mqtt-spool-max", type=float, default=DEFAULT_SPOOL_MB, metavar="MB",
                       help=f"the spool's size bound; past it the oldest results are dropped and counted "
                            f"(default {DEFAULT_SPOOL_MB:.0f})")
    group.add_argument("--metrics-port", type=int, metavar="PORT",
                       help="serve Prometheus metrics on http://HOST:PORT/metrics, for a scraper (--serve also "
                            "serves them, with a live view for people)")
    group.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                       help="the address the metrics listen on (default 127.0.0.1; ::1 for IPv6; 0.0.0.0 or :: "
                            "for every interface, which needs $EDGE_SERVE_TOKEN: scrapers send it as a bearer token)")


def check_telemetry_arguments(args: Any) -> Optional[str]:
    """Why the telemetry flags cannot work as given (checked before the model loads), or None."""
    from edge.sinks.mqtt import Credentials, PublisherError, parse_url

    if getattr(args, "image", None) and (args.mqtt or args.metrics_port is not None):
        return "--mqtt and --metrics-port are for --camera and --source (a stream of frames), not --image"
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        return f"--metrics-port must be from 0 to 65535, not {args.metrics_port}"
    if args.metrics_port is not None:
        from edge.sinks.httpd import Address, ServeError, check_exposure, check_host

        try:  # beyond loopback only with a token (the same rule as --serve's)
            address = Address(check_host(args.metrics_host, "--metrics-host"), args.metrics_port)
            check_exposure(address, "--metrics-port")
        except ServeError as exc:
            return str(exc)
    if not args.mqtt:
        return None
    try:
        parse_url(args.mqtt)
        Credentials.from_environment()
    except PublisherError as exc:
        return str(exc)
    if args.mqtt_name is not None and (not args.mqtt_name or any(c in args.mqtt_name for c in "/+#\0")):
        return f"--mqtt-name {args.mqtt_name!r}: one topic level, without / + #"
    if args.mqtt_ca and not Path(args.mqtt_ca).is_file():
        return f"--mqtt-ca {args.mqtt_ca}: no such file"
    if not args.mqtt_spool_max > 0:
        return f"--mqtt-spool-max must be more than 0 MB, not {args.mqtt_spool_max}"
    if not args.mqtt_heartbeat >= 0:
        return f"--mqtt-heartbeat must be 0 or more seconds, not {args.mqtt_heartbeat}"
    return None


def _every(text: str) -> str:
    value = text.strip().lower()
    if value in ("change", "frame") or (value.isdigit() and int(value) >= 1):
        return value
    raise argparse.ArgumentTypeError(f"change, frame or a number of frames (1 or more), not {text!r}")


@dataclass(frozen=True)
class TelemetryOptions:
    """The telemetry flags (their names are the flags'), carried by ``edge.settings.Settings``."""

    mqtt: Optional[str] = None
    mqtt_every: str = "change"
    mqtt_heartbeat: float = DEFAULT_HEARTBEAT_S
    mqtt_name: Optional[str] = None
    mqtt_ca: Optional[str] = None
    mqtt_spool: Optional[str] = None
    mqtt_spool_max: float = DEFAULT_SPOOL_MB
    metrics_port: Optional[int] = None
    metrics_host: str = "127.0.0.1"
    model: str = ""  # for the metrics' info labels

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Optional[TelemetryOptions]":
        """The options when ``--mqtt`` or ``--metrics-port`` is given; None otherwise."""
        if not getattr(args, "mqtt", None) and getattr(args, "metrics_port", None) is None:
            return None
        names = [f.name for f in fields(cls) if f.name != "model"]
        return cls(model=str(getattr(args, "model", None) or ""), **{n: getattr(args, n) for n in names})


class Telemetry:
    """The MQTT publisher and the metrics of one run; either may be absent."""

    def __init__(self, publisher: Any = None, metrics: Any = None, topic: str = "", every: str = "change",
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S, clock: Callable[[], float] = time.monotonic,
                 levels: Optional[Dict[str, str]] = None) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self.topic = topic  # one source's label topic
        self.levels = levels or {}  # several sources: each one's name -> its topic level
        self._every = every
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._last_label: Dict[str, str] = {}  # per source: MQTT's --mqtt-every change and heartbeat are its own
        self._last_sent: Dict[str, float] = {}

    @classmethod
    def open(cls, options: Optional[TelemetryOptions], sources: Sequence[str], classifier: Any,
             stop: Optional[threading.Event] = None, levels: Optional[Dict[str, str]] = None
             ) -> "Optional[Telemetry]":
        """What the options ask for, started; None without them (the loop then builds no record for them).
        ``sources``: the sources' names (the metrics' ``source`` labels; the first names a lone source's topic).
        ``stop`` (set by SIGTERM) cuts short the wait for the broker's first answer. ``levels``: with several
        sources, each one's topic level (``<prefix>/<level>/label``, ``/model``); the connection's own status
        topic is then ``<prefix>/<--mqtt-name, default edge-classify>/status``."""
        if options is None:
            return None
        metrics = publisher = None
        try:
            if options.metrics_port is not None:
                metrics = _open_metrics(options, sources, classifier)
            if options.mqtt:
                publisher = _open_publisher(options, PROCESS_LEVEL if levels else sources[0], stop)
        except Exception:
            if metrics is not None:
                metrics.close()
            raise
        topic = f"{publisher.target.prefix}/{publisher.name}/label" if publisher is not None else ""
        if metrics is not None and publisher is not None:
            metrics.watch_mqtt(publisher.stats)
        return cls(publisher, metrics, topic, options.mqtt_every, options.mqtt_heartbeat, levels=levels)

    def watch(self, source: str, grabber: Any) -> None:
        """Read a source's grabber's drop and reconnect counts at scrape time."""
        if self.metrics is not None:
            self.metrics.watch(source, lambda: grabber.dropped, lambda: grabber.reconnects)

    def write(self, result: Any) -> None:
        """The loop's sink call (``edge.sinks.Result``): metrics, and MQTT when the frame is due."""
        self.send(result.record, result.prediction, result.stages, result.age_ms, result.fps, result.name)

    def send(self, record: Dict[str, Any], prediction: Any, stages_ms: Dict[str, float], age_ms: float,
             fps: float, source: str) -> None:
        if self.metrics is not None:
            self.metrics.frame(source, prediction.label, prediction.index, prediction.score, stages_ms, age_ms, fps)
        if self.publisher is not None and self._due(source, record["frame"], prediction.label):
            from edge.sinks.console import json_line

            self.publisher.submit(self._topic(source, "label"), json_line(record, "utf-8"))  # lone surrogates escaped
            self._last_sent[source] = self._clock()
        self._last_label[source] = prediction.label

    def _topic(self, source: str, leaf: str) -> str:
        """``<prefix>/<level>/<leaf>``: the source's own level with several sources, the connection's with one."""
        if source not in self.levels and leaf == "label":
            return self.topic
        return f"{self.publisher.target.prefix}/{self.levels.get(source, self.publisher.name)}/{leaf}"

    def model_changed(self, facts: Dict[str, Any]) -> None:
        """A model swapped in, refused or first hashed (``edge.model.swap``): Prometheus, and a retained MQTT
        message on ``<prefix>/<source>/model``."""
        if self.metrics is not None:
            self.metrics.model_changed(facts)
        if self.publisher is not None:
            from edge.sinks.console import json_line

            for source in self.levels or [""]:  # every source's model topic: they all run this model
                self.publisher.submit(self._topic(source, "model"), json_line(facts, "utf-8"), retain=True)

    def _due(self, source: str, number: int, label: str) -> bool:
        if self._every == "frame":
            return True
        if self._every == "change":
            if label != self._last_label.get(source):
                return True
        elif number % int(self._every) == 0:
            return True
        last = self._last_sent.setdefault(source, self._clock())
        return bool(self._heartbeat_s) and self._clock() - last >= self._heartbeat_s

    def summary(self) -> Optional[str]:
        if self.publisher is None:
            return None
        stats = self.publisher.stats
        return (f"MQTT {self.publisher.target.url}: {stats.sent} sent, {stats.queued} waiting in the spool, "
                f"{stats.dropped} dropped, {stats.connects} connections")

    def close(self) -> None:
        try:
            if self.publisher is not None:
                self.publisher.close()
                line = self.summary()
                if line:
                    log.info("%s", line)
        finally:
            if self.metrics is not None:
                self.metrics.close()


PROCESS_LEVEL = "edge-classify"  # the connection's status topic level with several sources (no --mqtt-name)


def _open_metrics(options: TelemetryOptions, sources: Sequence[str], classifier: Any) -> Any:
    from edge.sinks.metrics import Metrics, MetricsError

    try:
        metrics = Metrics(sources, model=options.model,
                          arch=classifier.spec.arch, precision=classifier.spec.precision,
                          provider=str(classifier.backend.provider), version=_version())
        metrics.serve(options.metrics_host, options.metrics_port)
    except MetricsError as exc:
        raise TelemetryError(str(exc)) from None
    return metrics


def _open_publisher(options: TelemetryOptions, source: str, stop: Optional[threading.Event]) -> Any:
    from edge.sinks.mqtt import Credentials, Publisher, PublisherError, parse_url, require_paho
    from edge.sources.sourcelist import short_name
    from edge.sinks.spool import Spool, SpoolError

    try:
        require_paho()  # before the spool is opened (and locked)
        problem = check_telemetry_arguments(options)  # again: run_stream may be called without edge.cli
        if problem:
            raise PublisherError(problem)
        target = parse_url(options.mqtt)
        name = options.mqtt_name or short_name(source)
        folder = Path(options.mqtt_spool) if options.mqtt_spool else default_spool(name)
        spool = Spool(folder, int(options.mqtt_spool_max * 1024 * 1024))
        publisher = Publisher(target, Credentials.from_environment(), name, spool, ca_file=options.mqtt_ca)
        try:
            publisher.start(stop=stop)
        except PublisherError:
            spool.close()
            raise
    except (PublisherError, SpoolError) as exc:
        raise TelemetryError(str(exc)) from None
    return publisher


def default_spool(name: str) -> Path:
    """``$STATE_DIRECTORY/mqtt`` under systemd (the unit's StateDirectory=), else the user's state folder."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "mqtt"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "edge-classify" / "mqtt" / name


def _version() -> str:
    from edge import __version__

    return __version__
