"""Publish each frame's result to an MQTT broker, QoS 1, with nothing lost while the broker is away.

``edge-classify --source ... --mqtt mqtt://broker:1883/edge`` lands here through ``edge.sinks.telemetry``::

    target = parse_url("mqtt://broker:1883/edge")            # host, port, topic prefix, TLS or not
    publisher = Publisher(target, Credentials.from_environment(), "cam1", spool=Spool(folder, 64 << 20))
    publisher.start(wait_s=5.0, stop=stop)   # PublisherError: a refused login or a TLS failure (exit 2)
    publisher.submit("edge/cam1/label", json_text)    # written to the spool, then sent by a thread
    publisher.close()                  # sends what it can in a few seconds; the rest stays spooled

Topics (``<prefix>/<name>/...``): ``label`` gets the same object as a ``--json`` line; ``status`` is
retained, ``online`` while connected and ``offline`` (the broker's last will, or ours on a clean stop).

paho's own thread (``loop_start``) runs the connection and reconnects with backoff (0.5 s doubling to
30 s); paho keeps what is in flight and sends it again after a reconnect. Every message is first a row
of the spool (``edge.sinks.spool``); a sender thread hands the oldest to paho, at most ``WINDOW`` in
flight, and a row leaves the spool only when the broker has acknowledged it (``on_publish``). So the
broker sees every message in order, some twice (QoS 1). Credentials come from
``$EDGE_MQTT_USERNAME`` / ``$EDGE_MQTT_PASSWORD``, never the command line. paho-mqtt 1.6 (the last
for Python 3.6) and 2.x (its new callback API) both work.
"""


import collections
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import unquote, urlsplit

from edge.sinks.spool import Message, Spool

log = logging.getLogger(__name__)

SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}
USERNAME_ENV, PASSWORD_ENV = "EDGE_MQTT_USERNAME", "EDGE_MQTT_PASSWORD"
QOS = 1
WINDOW = 50  # messages in flight (sent, not yet acknowledged) at a time
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 5.0  # how long start() waits for the broker's first answer
RECONNECT_S = (0.5, 30.0)  # paho's backoff: first wait, longest wait
CLOSE_FLUSH_S = 3.0  # a stop sends what it can in this long; the rest stays spooled for the next run
ACK_WAIT_S = 0.4  # ... but gives up as soon as the broker has acknowledged nothing for this long
SEND_POLL_S = 0.5
BAD_LOGIN = {4, 5, 134, 135}  # CONNACK: bad user name or password / not authorised (MQTT 3.1.1 and 5 codes)


class PublisherError(RuntimeError):
    """A setting the user must fix (a refused login, a bad URL, a TLS failure): one line, exit 2."""


@dataclass(frozen=True)
class Target:
    """Where to publish: from ``mqtt://host:port/prefix`` or ``mqtts://...`` (TLS)."""

    host: str
    port: int
    prefix: str
    tls: bool
    url: str  # as shown in messages (never holds credentials)


@dataclass(frozen=True)
class Credentials:
    username: Optional[str] = None
    password: Optional[str] = None

    @classmethod
    def from_environment(cls, environ: Optional[Dict[str, str]] = None) -> "Credentials":
        """The login from the environment; a password without a user name is refused (it would be ignored)."""
        env = os.environ if environ is None else environ
        username, password = env.get(USERNAME_ENV) or None, env.get(PASSWORD_ENV) or None
        if password is not None and username is None:
            raise PublisherError(f"${PASSWORD_ENV} is set but ${USERNAME_ENV} is not: set both, or neither for a "
                                 "broker that takes anonymous clients")
        return cls(username, password)


def parse_url(url: str) -> Target:
    """``mqtt[s]://host[:port][/topic/prefix]``; credentials in it are refused (they would show in ``ps``)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if parts.username is not None or parts.password is not None:  # checked first: no message may echo them
        raise PublisherError(f"--mqtt: put the user name and password in ${USERNAME_ENV} and ${PASSWORD_ENV} "
                             "(or the service's environment file), not in the URL, where ps shows them")
    if scheme not in SCHEMES:
        raise PublisherError(f"--mqtt {url}: use mqtt://host:1883/prefix or mqtts://host:8883/prefix")
    try:
        port = parts.port or SCHEMES[scheme][0]
    except ValueError:
        raise PublisherError(f"--mqtt {url}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise PublisherError(f"--mqtt {url}: no broker host")
    prefix = unquote(parts.path).strip("/") or "edge-classify"
    if any(c in prefix for c in "+#\0"):
        raise PublisherError(f"--mqtt {url}: a topic prefix cannot hold + # or NUL")
    return Target(parts.hostname, port, prefix, SCHEMES[scheme][1], f"{scheme}://{parts.hostname}:{port}/{prefix}")


class Stats:
    """Counts since start, read live by the metrics and the closing line."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self.sent = 0  # acknowledged by the broker
        self.connects = 0
        self.connected = False

    @property
    def queued(self) -> int:
        """In the spool, not yet acknowledged."""
        return self._spool.queued

    @property
    def dropped(self) -> int:
        """Never sent: past the spool's bound, not writable (a full disk), or not sendable (a damaged row)."""
        return self._spool.dropped


class Publisher:
    """MQTT QoS 1 through the spool, on paho's network thread and a sender thread (see the module docstring)."""

    def __init__(self, target: Target, credentials: Credentials, name: str, spool: Spool,
                 ca_file: Optional[str] = None) -> None:
        self.target = target
        self.credentials = credentials
        self.name = name
        self.status_topic = f"{target.prefix}/{name}/status"
        self.ca_file = ca_file
        self.stats = Stats(spool)
        self._mqtt = require_paho()
        self._spool = spool
        self._client: Any = None
        self._in_flight: Dict[int, int] = {}  # paho's message id -> spool row id (the sender thread's)
        self._acks: "collections.deque[int]" = collections.deque()  # acknowledged ids, from paho's thread
        self._unremoved: List[int] = []  # rows sent that the spool could not delete yet
        self._resend_first = False  # after a drop, what paho re-sends goes before anything new
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._answered = threading.Event()  # the broker's first answer, or a failure to reach it
        self._lock = threading.Lock()  # whether start() still waits (a refusal is then fatal), or close() began
        self._started = self._closing = False
        self._fatal: Optional[str] = None
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-send", daemon=True)
        self._listening: Dict[str, Callable[[bytes], None]] = {}  # topic -> callback (paho's thread)

    # ------------------------------------------------------------------------------------ loop side

    def start(self, wait_s: float = CONNECT_TIMEOUT_S, stop: Optional[threading.Event] = None) -> None:
        """Connect and wait up to ``wait_s`` (or until ``stop`` is set) for the broker. One that is down is fine
        (messages are spooled); a refused login or a TLS failure raises PublisherError."""
        self._client = self._new_client()
        self._sender.start()
        threading.Thread(target=self._connect_first, name="mqtt-connect", daemon=True).start()
        deadline = time.monotonic() + wait_s
        while not self._answered.wait(0.05) and time.monotonic() < deadline and not (stop and stop.is_set()):
            pass
        with self._lock:
            self._started = True  # from here on a refusal is logged and paho retries
            fatal = self._fatal
        if fatal is not None:
            self.close(flush_s=0)
            raise PublisherError(fatal)
        if not self.stats.connected:
            log.warning("MQTT broker %s not reachable yet: results are spooled in %s and sent once it is",
                        self.target.url, self._spool.folder)

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Subscribe to ``topic`` (again after every reconnect); ``callback(payload)`` runs on paho's thread."""
        self._listening[topic] = callback
        client = self._client
        if client is not None:
            self._add_listener(client, topic, callback)
            if self.stats.connected:
                client.subscribe(topic, qos=QOS)

    def _add_listener(self, client: Any, topic: str, callback: Callable[[bytes], None]) -> None:
        client.message_callback_add(topic, lambda _client, _userdata, message: callback(message.payload))

    def submit(self, topic: str, payload: str, retain: bool = False) -> None:
        """Write one message to the spool (a failure is counted there) and wake the sender."""
        if self._spool.append(Message(topic, payload, retain)):
            self._wake.set()

    def close(self, flush_s: float = CLOSE_FLUSH_S) -> None:
        """Up to ``flush_s`` to send what is waiting while the broker answers, then ``offline`` and disconnect."""
        with self._lock:
            self._closing = True
        answering = self._flush(flush_s)
        self._stopping.set()
        self._wake.set()
        if self._sender.ident is not None:
            self._sender.join()
        if self._client is not None:
            self._say_offline(wait=answering)
            self._client.disconnect()
            # paho may sleep up to 1 s between reconnect tries before it sees the stop: not waited for
            stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
            stopper.start()
            stopper.join(0.3)
        self._settle()
        self._spool.close()
        if self.stats.queued:
            log.info("MQTT: %d messages left in the spool %s; the next run sends them first", self.stats.queued,
                     self._spool.folder)

    def _flush(self, flush_s: float) -> bool:
        """Wait while the spool empties; False if the broker stopped acknowledging (or was not there)."""
        deadline = time.monotonic() + flush_s
        sent, last_ack = self.stats.sent, time.monotonic()
        while self.stats.connected and self.stats.queued and time.monotonic() < deadline:
            time.sleep(0.01)
            if self.stats.sent != sent:
                sent, last_ack = self.stats.sent, time.monotonic()
            elif time.monotonic() - last_ack > ACK_WAIT_S:
                return False
        return self.stats.connected

    def _say_offline(self, wait: bool) -> None:
        if not self.stats.connected:
            return
        info = self._client.publish(self.status_topic, "offline", qos=QOS, retain=True)
        until = time.monotonic() + (ACK_WAIT_S if wait else 0)
        while not info.is_published() and time.monotonic() < until and self.stats.connected:
            time.sleep(0.005)

    # ------------------------------------------------------------------------------------ connection

    def _new_client(self) -> Any:
        mqtt = self._mqtt
        client_id = f"edge-classify-{socket.gethostname()}-{self.name}-{os.getpid()}"[:64]
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt >= 2
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        else:
            client = mqtt.Client(client_id=client_id, clean_session=True)
        if self.credentials.username is not None:
            client.username_pw_set(self.credentials.username, self.credentials.password)
        if self.target.tls:
            try:
                client.tls_set(ca_certs=self.ca_file)
            except (ssl.SSLError, OSError, ValueError) as exc:  # not a PEM file
                raise PublisherError(f"TLS with {self.target.url} failed: --mqtt-ca {self.ca_file}: "
                                     f"{getattr(exc, 'reason', None) or exc}") from None
        client.will_set(self.status_topic, "offline", qos=QOS, retain=True)
        client.max_inflight_messages_set(WINDOW + 2)  # and the status messages
        client.reconnect_delay_set(*RECONNECT_S)
        client.on_connect = self._on_connect
        for topic, callback in self._listening.items():
            self._add_listener(client, topic, callback)
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _connect_first(self) -> None:
        """The first connection here, where its errors can be told apart; then paho's thread (and its retries)."""
        try:
            self._client.connect(self.target.host, self.target.port, keepalive=KEEPALIVE_S)
        except (ssl.SSLError, ssl.CertificateError) as exc:  # a certificate that does not verify: a setting to fix
            # (on Python 3.6 a host name mismatch is a CertificateError, a ValueError but no SSLError)
            hint = "" if self.ca_file else " (a private CA? pass it with --mqtt-ca FILE)"
            if self._refused(f"TLS with {self.target.url} failed: {getattr(exc, 'reason', None) or exc}{hint}"):
                return
        except (OSError, ValueError) as exc:  # refused, unreachable, no such host: paho tries again
            log.debug("MQTT: %s: %s", self.target.url, exc)
            self._answered.set()
        with self._lock:
            if not self._closing:
                self._client.loop_start()

    def _refused(self, message: str) -> bool:
        """A refused login or failed TLS: fatal while start() waits; later (the broker's settings changed under
        a running service) logged, and paho keeps retrying so the results keep being spooled."""
        with self._lock:
            fatal = not self._started
            if fatal:
                self._fatal = message
        self._answered.set()
        if not fatal:
            log.error("%s; retrying", message)
        return fatal

    # ------------------------------------------------------------------------------------ paho's thread

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, *_rest: Any) -> None:
        code = int(getattr(reason, "value", reason))
        if code != 0:
            text = str(reason) if hasattr(reason, "value") else self._mqtt.connack_string(code)
            hint = f" (check ${USERNAME_ENV} / ${PASSWORD_ENV})" if code in BAD_LOGIN else ""
            if self._refused(f"the MQTT broker {self.target.url} refused the connection: {text}{hint}"):
                client.disconnect()  # no retries: start() raises
            return
        self.stats.connected = True
        self.stats.connects += 1
        client.publish(self.status_topic, "online", qos=QOS, retain=True)
        for topic in list(self._listening):
            client.subscribe(topic, qos=QOS)
        log.info("MQTT: connected to %s%s", self.target.url,
                 f"; sending {self.stats.queued} spooled messages" if self.stats.queued else "")
        self._answered.set()
        self._wake.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, *args: Any) -> None:
        was_connected, self.stats.connected = self.stats.connected, False
        self._resend_first = True
        if was_connected and not self._stopping.is_set():
            reason = args[-2] if len(args) >= 2 else args[0] if args else "?"  # v2: (flags, reason, props)
            reason = reason if hasattr(reason, "value") else self._mqtt.error_string(reason)  # v1: an int
            log.warning("MQTT: %s: disconnected (%s); reconnecting, results spooled (%d waiting)", self.target.url,
                        reason, self.stats.queued)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_rest: Any) -> None:
        self._acks.append(mid)  # handled by the sender thread: paho holds its locks here
        self._wake.set()

    # ------------------------------------------------------------------------------------ sender thread

    def _send_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait(SEND_POLL_S)
                self._wake.clear()
                self._settle()
                if self.stats.connected:
                    self._send()
        except Exception:  # noqa: BLE001 - the sender must report and end quietly, never take the loop down
            log.exception("MQTT sender failed; results are spooled but no longer sent")

    def _settle(self) -> None:
        """Rows whose messages the broker acknowledged leave the spool (on a full disk: at a later try)."""
        rows = []
        while self._acks:
            row = self._in_flight.pop(self._acks.popleft(), None)
            if row is not None:  # None: a status message
                rows.append(row)
        self.stats.sent += len(rows)
        rows += self._unremoved
        self._unremoved = [] if not rows or self._spool.remove(rows) else rows

    def _send(self) -> None:
        if self._resend_first:  # paho re-sends what was in flight at the drop: those arrive first, in order
            if self._in_flight:
                return
            self._resend_first = False
        for row_id, message in self._spool.take(WINDOW - len(self._in_flight)):
            try:
                info = self._client.publish(message.topic, message.payload, qos=QOS, retain=message.retain)
            except (ValueError, TypeError) as exc:  # a wildcard in the topic, a payload too large: never sendable
                self._spool.discard(row_id, f"paho refuses it ({exc})")
                continue
            self._in_flight[info.mid] = row_id  # not connected any more: paho keeps it and sends it on reconnect


def require_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise PublisherError("--mqtt needs paho-mqtt: pip install '.[mqtt]' in the edge-classifier checkout") from None
    return mqtt
