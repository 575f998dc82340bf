"""sd_notify for the capture loop: tell systemd we are ready, alive, what we see, and that we stop.

A few datagrams over the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (pure stdlib, no libsystemd)::

    notifier = Notifier.from_environment()     # a no-op object outside a Type=notify service
    notifier.ready("classifying csi://0")      # READY=1 + STATUS=...
    for frame in frames:
        ...
        notifier.watchdog()                    # every frame; sends WATCHDOG=1 only every WATCHDOG_USEC / 2
    notifier.status("tabby 83% | 29.8 fps")    # shown by `systemctl status` and `edge-service status`
    notifier.stopping()                        # STOPPING=1
    notifier.close()

The watchdog is pinged from the loop itself, so a hung camera or backend stops the pings and systemd
kills and restarts the service. Send errors are logged once and never raised: losing a status line must
not take the camera loop down.
"""


import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping, Optional, Union

log = logging.getLogger(__name__)

Address = Union[str, bytes]
SEND_TIMEOUT_S = 1.0  # a stuck systemd must not stall the loop for longer than this per message


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; every method is a cheap no-op without it."""

    enabled: bool
    watchdog_interval: Optional[float]  # seconds between pings (half of $WATCHDOG_USEC); None: no watchdog

    def __init__(self, address: Optional[Address] = None, watchdog_interval: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._address = address
        self._socket: Optional[socket.socket] = None
        self._clock = clock
        self._last_ping = float("-inf")  # the first watchdog() call pings at once
        self._lock = threading.Lock()  # status() is also called from the grabber thread
        self._warned = False
        if address is not None:
            try:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(SEND_TIMEOUT_S)
            except (OSError, AttributeError) as exc:  # AttributeError: no AF_UNIX on this platform
                log.warning("cannot notify systemd: no datagram socket (%s)", exc)
                self._socket = None
        self.enabled = self._socket is not None
        self.watchdog_interval = watchdog_interval if self.enabled else None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Notifier":
        """A notifier for ``$NOTIFY_SOCKET`` (path or ``@abstract``) with ``$WATCHDOG_USEC`` / ``$WATCHDOG_PID``."""
        address = socket_address(environ.get("NOTIFY_SOCKET", ""))
        return cls(address, watchdog_interval(environ) if address is not None else None)

    def ready(self, status: Optional[str] = None) -> None:
        """READY=1 (with STATUS= when given): the model is loaded and frames flow."""
        self._send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> None:
        """STATUS=...: one line that ``systemctl status`` shows."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """WATCHDOG=1, at most once per ``watchdog_interval``; call it after every frame."""
        if self.watchdog_interval is None:
            return
        now = self._clock()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """STOPPING=1: shutting down on purpose (SIGTERM, end of stream, --max-frames)."""
        self._send("STOPPING=1")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
        self.watchdog_interval = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        with self._lock:
            if self._socket is None:
                return
            try:
                self._socket.sendto(message.encode("utf-8", "replace"), self._address)
            except OSError as exc:  # systemd gone, socket full, permission: keep classifying
                if not self._warned:
                    self._warned = True
                    log.warning("cannot notify systemd at %s: %s (further errors not shown)",
                                _printable(self._address), exc)


def socket_address(value: str) -> Optional[Address]:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: a path, or ``@name`` -> an abstract socket (leading NUL)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    # systemd >= 254 also hands out vsock: addresses (to VMs); a camera service never gets one.
    log.warning("NOTIFY_SOCKET=%s is not a path or an @abstract socket: not notifying systemd", value)
    return None


def watchdog_interval(environ: Mapping[str, str]) -> Optional[float]:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process (``$WATCHDOG_PID``)."""
    pid = environ.get("WATCHDOG_PID", "").strip()
    if pid and pid != str(os.getpid()):
        return None  # the variables were inherited from a parent that has its own watchdog
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def _one_line(text: str) -> str:
    # A newline would start a new NAME=VALUE assignment in the datagram.
    return str(text).replace("\r", " ").replace("\n", " ")


def _printable(address: Optional[Address]) -> str:
    if isinstance(address, bytes):
        return "@" + os.fsdecode(address[1:]) if address.startswith(b"\0") else os.fsdecode(address)
    return str(address)
