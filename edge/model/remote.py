"""A model ordered over MQTT (``--mqtt-allow-model-updates``): the order checked, the file fetched and verified.

    order = parse_order(b'{"url": "https://models.example/m.onnx", "sha256": "9f2c..."}')   # OrderError
    fetch(order, Path("/var/lib/edge-classify/.m.onnx.download.onnx"))   # OrderError: size, time, sha256

Only ``https://`` URLs, or ``http://`` to this machine (127.0.0.1, ::1, localhost), are fetched, redirects
included; at most ``MAX_BYTES`` in at most ``TIMEOUT_S`` seconds; the file's sha256 must be the one ordered.
What to do with the file (the same checks, canary and swap as a reload) is ``edge.model.swap``'s.
"""

import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

MAX_BYTES = 512 << 20  # more than any classifier we export (resnet50 FP32 is ~100 MB); a 4 GB Nano's disk is small
TIMEOUT_S = 300.0  # the whole download; each read also times out after READ_TIMEOUT_S
READ_TIMEOUT_S = 30.0
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
SHA256 = re.compile(r"[0-9a-f]{64}")


class OrderError(ValueError):
    """A model order that is refused (one line)."""


class Order(NamedTuple):
    url: str
    sha256: str


def parse_order(payload: bytes) -> Order:
    """``{"url": ..., "sha256": ...}`` -> Order; OrderError for anything else."""
    try:
        facts = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OrderError('a model order is a JSON object {"url": ..., "sha256": ...}') from None
    if not isinstance(facts, dict) or not isinstance(facts.get("url"), str) or not isinstance(facts.get("sha256"), str):
        raise OrderError('a model order is a JSON object {"url": ..., "sha256": ...}')
    sha = facts["sha256"].strip().lower()
    if not SHA256.fullmatch(sha):
        raise OrderError("the order's sha256 is not 64 hex digits")
    check_url(facts["url"])
    return Order(facts["url"], sha)


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return
    raise OrderError(f"{_shown(url)}: only https:// URLs (or http:// to this machine) are fetched")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is followed only to a URL that ``check_url`` allows (no https -> plain http downgrade)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(order: Order, target: Path, max_bytes: int = MAX_BYTES, timeout_s: float = TIMEOUT_S) -> None:
    """Download ``order.url`` into ``target`` (which exists, empty); OrderError unless its sha256 is the order's."""
    opener = urllib.request.build_opener(_CheckedRedirects)
    deadline = time.monotonic() + timeout_s
    digest, size = hashlib.sha256(), 0
    try:
        with opener.open(order.url, timeout=READ_TIMEOUT_S) as response, open(str(target), "wb") as out:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise OrderError(f"{_shown(order.url)} is {int(declared)} bytes; at most {max_bytes} are fetched")
            for block in iter(lambda: response.read(1 << 20), b""):
                size += len(block)
                if size > max_bytes:
                    raise OrderError(f"{_shown(order.url)} is over {max_bytes} bytes; not fetched")
                if time.monotonic() > deadline:
                    raise OrderError(f"{_shown(order.url)} took over {timeout_s:g} s; not fetched")
                digest.update(block)
                out.write(block)
    except OrderError:
        raise
    except urllib.error.HTTPError as exc:
        raise OrderError(f"{_shown(order.url)}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise OrderError(f"{_shown(order.url)}: cannot fetch it ({reason})") from None
    if digest.hexdigest() != order.sha256:
        raise OrderError(f"{_shown(order.url)}: sha256 {digest.hexdigest()[:12]} is not the ordered "
                         f"{order.sha256[:12]}; not used")


def _shown(url: str) -> str:
    """The URL without user:password (it goes to logs and MQTT)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"[:200]
