"""Publish each frame's result to an MQTT broker, QoS 1, with nothing lost while the broker is away.

``edge-classify --source ... --mqtt mqtt://broker:1883/edge`` lands here through ``edge.fleet``::

    target = parse_url("mqtt://broker:1883/edge")            # host, port, topic prefix, TLS or not
    publisher = Publisher(target, Credentials.from_environment(), "cam1", spool=Spool(folder, 64 << 20))
    publisher.start(wait_s=5.0)        # PublisherError: a refused login or a TLS failure (exit 2)
    publisher.submit("edge/cam1/label", json_text)    # never blocks: a queue, then a worker thread
    publisher.close()                  # sends what it can in a few seconds; the rest stays spooled

Topics (``<prefix>/<name>/...``): ``label`` gets the same object as a ``--json`` line; ``status`` is
retained, ``online`` while connected and ``offline`` (the broker's last will, or ours on a clean stop).

The worker thread owns the paho client and the on-disk spool (``edge.spool``): every message is
appended to the spool, sent in order from its oldest unacknowledged message with at most
``WINDOW`` in flight, and forgotten when the broker acknowledges it. When the connection drops it
reconnects with backoff (``Backoff``: 0.5 s doubling to 30 s) on a fresh client and re-sends from
the first unacknowledged message, so the broker sees every message in order, some twice (QoS 1).
Credentials come from ``$EDGE_MQTT_USERNAME`` / ``$EDGE_MQTT_PASSWORD``, never the command line.
paho-mqtt 1.6 (the last for Python 3.6) and 2.x (its new callback API) both work.
"""


import logging
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from .spool import Message, Position, Spool

log = logging.getLogger(__name__)

SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}
USERNAME_ENV, PASSWORD_ENV = "EDGE_MQTT_USERNAME", "EDGE_MQTT_PASSWORD"
QOS = 1
WINDOW = 50  # messages in flight (sent, not yet acknowledged) at a time
QUEUE_MAX = 10_000  # messages waiting for the worker; past it the loop's message is dropped and counted
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 5.0
CLOSE_FLUSH_S = 3.0  # a stop sends what it can in this long; the rest stays spooled for the next run
IDLE_POLL_S = 0.02
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
        env = os.environ if environ is None else environ
        return cls(env.get(USERNAME_ENV) or None, env.get(PASSWORD_ENV) or None)


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


def topic_name(source: str) -> str:
    """A topic level for a source: ``csi://0`` -> ``csi0``, ``/videos/door.avi`` -> ``door``, a stream -> its host."""
    text = source.strip()
    if "!" in text:  # a GStreamer pipeline
        return "pipeline"
    if "://" in text:
        parts = urlsplit(text)
        text = (parts.hostname or "") + parts.path if parts.scheme not in ("csi", "file") else parts.scheme + \
            parts.netloc + parts.path
    else:
        text = Path(text).stem if not text.isdigit() else "camera" + text
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.")
    return cleaned or "source"


class Backoff:
    """Seconds to wait before the next try: ``first`` doubling to ``most``; ``reset()`` after a success."""

    def __init__(self, first: float = 0.5, most: float = 30.0) -> None:
        self.first, self.most = first, most
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.most)
        return delay

    def reset(self) -> None:
        self._next = self.first


@dataclass
class Stats:
    """Counts since start, read by the metrics and the end-of-run line (ints: safe to read from any thread)."""

    submitted: int = 0
    sent: int = 0  # acknowledged by the broker
    dropped: int = 0  # never sent: the loop outran the worker, or the spool's bound was reached
    queued: int = 0  # on disk, not yet acknowledged
    connects: int = 0
    connected: bool = False


class Publisher:
    """MQTT QoS 1 from a worker thread, through the spool (see the module docstring)."""

    def __init__(self, target: Target, credentials: Credentials, name: str, spool: Spool,
                 ca_file: Optional[str] = None) -> None:
        self.target = target
        self.credentials = credentials
        self.name = name
        self.status_topic = f"{target.prefix}/{name}/status"
        self.ca_file = ca_file
        self.stats = Stats()
        self._mqtt = require_paho()
        self._spool = spool
        self._inbox: "queue.Queue[Message]" = queue.Queue(maxsize=QUEUE_MAX)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._first_outcome = threading.Event()
        self._outcome_lock = threading.Lock()  # a refusal is fatal only while start() still waits for it
        self._fatal: Optional[str] = None
        self._client: Any = None
        self._client_state = "down"  # down, connecting, up
        self._connect_started = 0.0
        self._inflight: "Dict[int, Tuple[Position, bool]]" = {}  # mid -> (spool position, acknowledged)
        self._order: List[int] = []  # mids in the order sent
        self._backoff = Backoff()
        self._next_try = 0.0
        self._dropped_inbox = 0  # counted by the loop thread (a full queue)
        self._dropped_unwritable = 0  # counted by the worker (the spool could not be written)
        self._warned_down = False
        self._flush_s = CLOSE_FLUSH_S
        self._refused_why: Optional[str] = None  # set by paho's callbacks, handled by _step
        self._lost_why: Optional[str] = None

    # ------------------------------------------------------------------------------------ loop side

    def start(self, wait_s: float = CONNECT_TIMEOUT_S) -> None:
        """Start the worker and wait up to ``wait_s`` for the first connection. A broker that is down is fine
        (messages are spooled); one that refuses the login, or a TLS failure, raises PublisherError."""
        self._thread.start()
        self._first_outcome.wait(wait_s)
        with self._outcome_lock:
            self._first_outcome.set()  # from here on a refusal is logged and retried (see _refused)
            fatal = self._fatal
        if fatal is not None:
            self.close(flush_s=0)
            raise PublisherError(fatal)
        if not self.stats.connected:
            log.warning("MQTT broker %s not reachable yet: results are spooled in %s and sent once it is",
                        self.target.url, self._spool.folder)

    def submit(self, topic: str, payload: str, retain: bool = False) -> None:
        """Queue one message for the worker; never blocks (a full queue drops it, counted)."""
        self.stats.submitted += 1
        try:
            self._inbox.put_nowait(Message(topic, payload, retain))
        except queue.Full:
            self._dropped_inbox += 1
            self.stats.dropped = self._dropped_inbox + self._dropped_unwritable + self._spool.dropped
            if self._dropped_inbox in (1, 10, 100) or self._dropped_inbox % 1000 == 0:
                log.warning("MQTT: the worker is behind (disk too slow?): %d messages dropped",
                            self._dropped_inbox)

    def close(self, flush_s: float = CLOSE_FLUSH_S) -> None:
        """Stop the worker: up to ``flush_s`` to send what is waiting, then ``offline`` and disconnect."""
        self._flush_s = flush_s
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(flush_s + CONNECT_TIMEOUT_S + 2.0)

    # ------------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._step()
            self._finish()
        except Exception:  # noqa: BLE001 - the worker must report and die quietly, never take the loop down
            log.exception("MQTT worker failed; results are no longer published")
            self._first_outcome.set()
        finally:
            self._spool.close()

    def _step(self) -> None:
        self._move_inbox_to_spool()
        if self._client_state == "down":
            if time.monotonic() >= self._next_try:
                self._connect()
            else:
                self._idle()
            return
        if self._client_state == "connecting" and time.monotonic() - self._connect_started > CONNECT_TIMEOUT_S:
            self._lost("no answer to CONNECT")
            return
        if self._client_state == "up":
            self._send_window()
            if self._client is None:  # the send found the connection gone
                return
        rc = self._client.loop(timeout=IDLE_POLL_S)
        # The callbacks only note what happened; the client is replaced here, outside paho's loop.
        refused, self._refused_why = self._refused_why, None
        lost, self._lost_why = self._lost_why, None
        if refused is not None:
            self._refused(refused)
        elif lost is not None or (rc != 0 and self._client_state != "down"):
            self._lost(lost or self._mqtt.error_string(rc))

    def _idle(self) -> None:
        try:
            message = self._inbox.get(timeout=IDLE_POLL_S)
        except queue.Empty:
            return
        self._to_spool([message])

    def _move_inbox_to_spool(self) -> None:
        batch: List[Message] = []
        while len(batch) < 1000:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if batch:
            self._to_spool(batch)

    def _to_spool(self, batch: List[Message]) -> None:
        try:
            self._spool.append(batch)
        except OSError as exc:  # a full or vanished disk: these are lost, counted; later ones may fare better
            self._dropped_unwritable += len(batch)
            log.warning("MQTT: cannot write the spool %s (%s): %d messages dropped (%d in all)", self._spool.folder,
                        exc.strerror or exc, len(batch), self._dropped_unwritable)
        self._refresh_stats()

    def _refresh_stats(self) -> None:
        self.stats.queued = self._spool.queued
        self.stats.dropped = self._dropped_inbox + self._dropped_unwritable + self._spool.dropped

    def _connect(self) -> None:
        self._client_state = "connecting"
        self._connect_started = time.monotonic()
        try:
            self._client = client = self._new_client()  # tls_set reads --mqtt-ca: not a PEM file is an SSLError
            client.connect(self.target.host, self.target.port, keepalive=KEEPALIVE_S)
        except (ssl.SSLError, ssl.CertificateError) as exc:  # a certificate that does not verify: a setting to fix
            # (on Python 3.6 a host name mismatch is a CertificateError, a ValueError but no SSLError)
            hint = "" if self.ca_file else " (a private CA? pass it with --mqtt-ca FILE)"
            self._refused(f"TLS with {self.target.url} failed: {getattr(exc, 'reason', None) or exc}{hint}")
        except (OSError, ValueError) as exc:  # refused, unreachable, no such host
            self._lost(getattr(exc, "strerror", None) or str(exc))

    def _new_client(self) -> Any:
        """A fresh client per connection: paho's own re-sending is not used (the spool re-sends, in order)."""
        mqtt = self._mqtt
        client_id = f"edge-classify-{socket.gethostname()}-{self.name}-{os.getpid()}"[:64]
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt >= 2
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        else:
            client = mqtt.Client(client_id=client_id, clean_session=True)
        if self.credentials.username is not None:
            client.username_pw_set(self.credentials.username, self.credentials.password)
        if self.target.tls:
            client.tls_set(ca_certs=self.ca_file)
        client.will_set(self.status_topic, "offline", qos=QOS, retain=True)
        client.max_inflight_messages_set(WINDOW + 2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, *_rest: Any) -> None:
        code = int(getattr(reason, "value", reason))
        if code != 0:
            text = str(reason) if hasattr(reason, "value") else self._mqtt.connack_string(code)
            hint = f" (check ${USERNAME_ENV} / ${PASSWORD_ENV})" if code in BAD_LOGIN else ""
            self._refused_why = f"the MQTT broker {self.target.url} refused the connection: {text}{hint}"
            return
        self._client_state = "up"
        self.stats.connected = True
        self.stats.connects += 1
        self._backoff.reset()
        self._warned_down = False
        self._spool.rewind()
        self._inflight.clear()
        self._order.clear()
        client.publish(self.status_topic, "online", qos=QOS, retain=True)
        log.info("MQTT: connected to %s%s", self.target.url,
                 f"; sending {self._spool.queued} spooled messages" if self._spool.queued else "")
        self._first_outcome.set()

    def _on_disconnect(self, _client: Any, _userdata: Any, *args: Any) -> None:
        if self._client_state != "down":
            reason = args[-2] if len(args) >= 2 else args[0] if args else "?"  # v2: (flags, reason, props)
            self._lost_why = f"disconnected ({reason})"

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_rest: Any) -> None:
        entry = self._inflight.get(mid)
        if entry is None:
            return  # the status message, or one from a connection since replaced
        self._inflight[mid] = (entry[0], True)
        last: Optional[Position] = None
        done = 0
        while self._order and self._inflight[self._order[0]][1]:
            last = self._inflight.pop(self._order.pop(0))[0]
            done += 1
        if last is not None:
            self._spool.acknowledge(last)
            self.stats.sent += done
            self._refresh_stats()

    def _send_window(self) -> None:
        room = WINDOW - len(self._order)
        if room <= 0:
            return
        for position, message in self._spool.take(room):
            info = self._client.publish(message.topic, message.payload, qos=QOS, retain=message.retain)
            if info.rc != 0:
                self._lost(self._mqtt.error_string(info.rc))
                return
            self._inflight[info.mid] = (position, False)
            self._order.append(info.mid)

    def _lost(self, why: str) -> None:
        why = why.rstrip(".")
        was_up = self._client_state == "up"
        self._drop_client()
        delay = self._backoff.next()
        self._next_try = time.monotonic() + delay
        if was_up or not self._warned_down:
            self._warned_down = True
            log.warning("MQTT: %s: %s; retrying in %.1f s, results spooled (%d waiting)", self.target.url, why,
                        delay, self._spool.queued)
        self._first_outcome.set()

    def _refused(self, message: str) -> None:
        """A refused login or failed TLS: fatal before the first frame; later (the broker's settings changed
        under a running service), logged and retried slowly so the results keep being spooled."""
        self._drop_client()
        with self._outcome_lock:
            fatal = not self._first_outcome.is_set()
            if fatal:
                self._fatal = message
                self._stop.set()
            self._first_outcome.set()
        if not fatal:
            log.error("%s; retrying in %.0f s", message, self._backoff.most)
            self._next_try = time.monotonic() + self._backoff.most

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._client_state = "down"
        self.stats.connected = False
        self._inflight.clear()
        self._order.clear()
        self._spool.rewind()  # what was in flight goes again, first, on the next connection
        if client is not None:
            client.on_disconnect = None
            try:
                client.disconnect()
                client.loop(timeout=0)
            except (OSError, ValueError):
                pass
            try:
                sock = client.socket()
                if sock is not None:
                    sock.close()
            except OSError:
                pass

    def _finish(self) -> None:
        """After stop: send for up to ``flush_s`` while connected, then ``offline`` (retained) and disconnect."""
        if self._fatal is not None:
            return
        deadline = time.monotonic() + self._flush_s
        self._move_inbox_to_spool()
        while self._client_state != "down" and self._spool.queued and time.monotonic() < deadline:
            self._step()
        if self._client_state == "up":
            info = self._client.publish(self.status_topic, "offline", qos=QOS, retain=True)
            until = time.monotonic() + 1.0
            while not info.is_published() and time.monotonic() < until and self._client_state == "up":
                self._client.loop(timeout=IDLE_POLL_S)
        self._drop_client()
        self._refresh_stats()
        if self.stats.queued:
            log.info("MQTT: %d messages left in the spool %s; the next run sends them first", self.stats.queued,
                     self._spool.folder)


def require_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise PublisherError("--mqtt needs paho-mqtt: pip install '.[mqtt]' in the edge-classifier checkout") from None
    return mqtt
