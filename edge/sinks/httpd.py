"""One hardened HTTP server for everything edge-classify serves: ``--serve`` (the live view) and ``--metrics-port``.

    address = parse_address("[::]:8080", "--serve")          # ServeError: not [HOST:]PORT
    check_exposure(address, "--serve")                        # ServeError: not loopback and no $EDGE_SERVE_TOKEN
    server = GuardedServer(address, Handler, "--serve")       # ServeError: the port is taken (exit 2)
    server.start("edge-live")
    server.close()

A device serves people and scrapers it does not control, next to a capture loop that must not notice.
So, whoever connects:
- it listens on loopback unless told otherwise (``ssh -L`` reaches it), IPv4 or IPv6; any other address
  needs a token (``$EDGE_SERVE_TOKEN``), sent as ``Authorization: Bearer T``, ``X-Edge-Token: T`` or
  ``?token=T``: missing, 401; wrong, 403. Without a token, a request whose ``Host`` is a name other than
  localhost is refused (403), so a web page cannot reach a loopback server through DNS rebinding;
- at most ``MAX_CONNECTIONS`` connections at once: past that a new one gets a 503 and is closed at once,
  so the server never holds more than that many file descriptors, however many clients come (the loop
  needs its own for the camera, the model and the spool);
- the request line and headers must arrive within ``REQUEST_DEADLINE_S`` in all (a client trickling bytes
  cannot keep a slot), and every read or write gives up after ``IO_TIMEOUT_S`` (a viewer that stops
  reading is dropped);
- every response is built from memory: no path reads the file system.
Standard library only (``BaseHTTPRequestHandler`` + ``ThreadingMixIn``, as on Python 3.6).
"""


import errno
import hmac
import ipaddress
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import TCPServer, ThreadingMixIn
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from edge.errors import EdgeError, one_line

log = logging.getLogger("edge-classify")

TOKEN_ENV = "EDGE_SERVE_TOKEN"
MAX_CONNECTIONS = 32
REQUEST_DEADLINE_S = 10.0
IO_TIMEOUT_S = 10.0
POLL_S = 0.2
MAX_POST_BYTES = 64 * 1024


class ServeError(EdgeError):
    """An address that cannot be served (malformed, taken, exposed without a token): one line, exit 2."""


@dataclass(frozen=True)
class Address:
    host: str  # without brackets
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def parse_address(text: str, flag: str, default_host: str = "127.0.0.1") -> Address:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` (``[::]:8080`` for every interface)."""
    given = str(text).strip()
    host, port = default_host, given
    if given.startswith("["):
        inside, bracket, rest = given[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ServeError(f"{flag} {given}: expected [HOST]:PORT, e.g. [::1]:8080")
        host, port = inside, rest[1:]
    elif ":" in given:
        host, _, port = given.rpartition(":")
        if ":" in host:
            raise ServeError(f"{flag} {given}: put an IPv6 address in brackets, e.g. [{host}]:{port}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServeError(f"{flag} {given}: the port must be a number from 0 to 65535")
    return Address(check_host(host, flag), int(port))


def check_host(host: str, flag: str) -> str:
    """``host`` without brackets, or ServeError when it is empty or holds characters no address has."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "/?#@[]" for c in host):
        raise ServeError(f"{flag}: {host!r} is not a host name or address")
    return host


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (a name that resolves only to loopback addresses)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in found)


def environment_token() -> Optional[str]:
    return os.environ.get(TOKEN_ENV) or None


def check_exposure(address: Address, flag: str, token: Optional[str] = None) -> None:
    """A server on an address other than loopback is reachable by the network: only with a token."""
    if not address.loopback and not (token or environment_token()):
        raise ServeError(f"{flag}: {address.url[7:]} is reachable beyond this machine, so it needs a token: set "
                         f"{TOKEN_ENV} (clients send 'Authorization: Bearer <token>'), or keep 127.0.0.1 and use ssh -L")


class GuardedServer(ThreadingMixIn, HTTPServer):
    """``HTTPServer`` with the guards of this module's docstring; ``handler`` should be a :class:`GuardedHandler`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: Address, handler: Any, flag: str, *, token: Optional[str] = None,
                 max_connections: int = MAX_CONNECTIONS, deadline_s: float = REQUEST_DEADLINE_S) -> None:
        self.flag = flag
        self.token = token if token is not None else environment_token()
        check_exposure(address, flag, self.token)
        self.max_connections = max_connections
        self.deadline_s = deadline_s
        self.closing = threading.Event()
        self.refused = 0  # connections turned away with a 503 (past the bound)
        self._lock = threading.Lock()
        self._connections: Dict[Any, Optional[float]] = {}  # socket -> when its headers must be in (None: they are)
        self._thread: Optional[threading.Thread] = None
        try:
            infos = socket.getaddrinfo(address.host, address.port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            self.address_family = infos[0][0]
            HTTPServer.__init__(self, infos[0][4][:2], handler)
        except (OSError, OverflowError, UnicodeError, IndexError) as exc:
            raise ServeError(f"{flag}: cannot listen on {address.url[7:]}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None

    def server_bind(self) -> None:
        # HTTPServer's own would look the host up in DNS (socket.getfqdn): seconds on a device without DNS.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": POLL_S}, name=name,
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, end the streams and drop every connection (their threads see EOF and finish)."""
        self.closing.set()
        if self._thread is not None:
            self.shutdown()
        self.server_close()
        with self._lock:
            open_now = list(self._connections)
        for connection in open_now:
            _shut(connection)

    # -- the guards

    def get_request(self) -> Tuple[Any, Any]:
        try:
            return self.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # the process is out of descriptors: do not spin on it
                time.sleep(POLL_S)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self.closing.is_set() or len(self._connections) >= self.max_connections
            if not full:
                self._connections[request] = time.monotonic() + self.deadline_s
        if full:
            self.refused += 1
            _refuse(request)
            TCPServer.shutdown_request(self, request)
            return
        try:
            ThreadingMixIn.process_request(self, request, client_address)
        except RuntimeError:  # no thread could be started (memory): turn the client away, keep serving
            self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.pop(request, None)
        TCPServer.shutdown_request(self, request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, never socketserver's traceback on stderr: a client that went away is not news."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("%s: %s: %s", self.flag, client_address[0], error)
        else:
            log.warning("%s: a request from %s failed: %s: %s", self.flag, client_address[0], type(error).__name__,
                        one_line(error) if error is not None else "")

    def request_read(self, connection: Any) -> None:
        """The request line and headers are in: the deadline no longer applies (IO_TIMEOUT_S still does)."""
        with self._lock:
            if connection in self._connections:
                self._connections[connection] = None

    def service_actions(self) -> None:
        """Every POLL_S on the server's thread: cut off connections still sending headers past the deadline."""
        now = time.monotonic()
        with self._lock:
            late = [c for c, due in self._connections.items() if due is not None and now > due]
        for connection in late:
            _shut(connection)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)


BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
        b"Connection: close\r\nContent-Length: 31\r\n\r\ntoo many connections; try again\n")


def _refuse(connection: Any) -> None:
    try:
        connection.setblocking(False)  # a new socket's send buffer is empty: this never waits
        connection.send(BUSY)
    except OSError:
        pass


def _shut(connection: Any) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)  # not close(): its thread closes it, so the number is not reused under it
    except OSError:
        pass


class GuardedHandler(BaseHTTPRequestHandler):
    """Token and Host checks, quiet logs, plain-text errors; subclasses implement ``get(path, query)``."""

    timeout = IO_TIMEOUT_S
    server_version = "edge-classify"
    sys_version = ""
    server: GuardedServer

    def version_string(self) -> str:
        return self.server_version

    def parse_request(self) -> bool:
        ok = BaseHTTPRequestHandler.parse_request(self)
        if ok:
            self.server.request_read(self.connection)
        return ok

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        refusal = self.refusal(query)
        if refusal is not None:
            self.reply(refusal[0], refusal[1] + "\n", extra={"WWW-Authenticate": "Bearer"} if refusal[0] == 401 else None)
            return
        try:
            self.get(parts.path, query)
        except (ConnectionError, socket.timeout):  # the client went away or stopped reading
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        """A small JSON body (at most ``MAX_POST_BYTES``), with the same token and Host checks as a GET."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        refusal = self.refusal(query) or self.post_refusal()
        if refusal is not None:
            self.close_connection = True  # an unread body must not be taken for the next request
            self.reply(refusal[0], refusal[1] + "\n", extra={"WWW-Authenticate": "Bearer"} if refusal[0] == 401 else None)
            return
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.post(parts.path, query, body)
        except (ConnectionError, socket.timeout):
            self.close_connection = True

    def post_refusal(self) -> Optional[Tuple[int, str]]:
        """JSON only (another site's form cannot send it without a preflight we never allow), bounded, same origin."""
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            return 415, "POST bodies are application/json"
        length = self.headers.get("Content-Length") or ""
        if not length.isdigit() or int(length) > MAX_POST_BYTES:
            return 413, f"a POST needs a Content-Length of at most {MAX_POST_BYTES} bytes"
        origin, host = self.headers.get("Origin"), self.headers.get("Host") or ""
        if origin and origin != "null" and urlsplit(origin).netloc != host:
            return 403, "a request from another site"
        return None

    def post(self, path: str, query: Dict[str, Any], body: bytes) -> None:
        self.reply(404, "not found\n")

    def refusal(self, query: Dict[str, Any]) -> Optional[Tuple[int, str]]:
        """(401 or 403, why) for a request that may not be answered, else None."""
        token = self.server.token
        if not token:
            host = (self.headers.get("Host") or "").strip()
            name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
            if name and not _allowed_host(name):
                return 403, f"unexpected Host {name[:100]!r}: open this page through localhost or an IP address"
            return None
        given = self.headers.get("X-Edge-Token") or ""
        authorization = self.headers.get("Authorization") or ""
        if authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip()
        if not given and query.get("token"):
            given = query["token"][0]
        if not given:
            return 401, f"a token is needed: 'Authorization: Bearer <{TOKEN_ENV}>' or ?token=..."
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8", "replace")):
            return 403, "wrong token"
        return None

    def get(self, path: str, query: Dict[str, Any]) -> None:
        self.reply(404, "not found\n")

    def reply(self, code: int, body: Any, content_type: str = "text/plain; charset=utf-8",
              extra: Optional[Dict[str, str]] = None) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_common_headers(extra)
        self.end_headers()
        self.wfile.write(data)

    def send_common_headers(self, extra: Optional[Dict[str, str]] = None) -> None:
        for key, value in (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                           ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
                           *(extra or {}).items()):
            self.send_header(key, value)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        token = self.server.token
        shown = [str(a).replace(token, "***") if token else a for a in args]  # ?token=... is in the request line
        log.debug("%s %s: " + format, self.server.flag, self.client_address[0], *shown)


def _allowed_host(name: str) -> bool:
    """A Host header a browser sends for a loopback server reached directly or through ``ssh -L``."""
    try:
        ipaddress.ip_address(name.split("%")[0])
        return True
    except ValueError:
        return name.lower() == "localhost" or name.lower().endswith(".localhost")
