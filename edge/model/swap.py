"""A new model without a restart: loaded beside the running one, checked, then swapped between two frames.

The loop reads its classifier from a :class:`ModelSlot` before each frame; a reload (SIGHUP, ``systemctl
reload``, or ``--watch-model`` seeing the file replaced) wakes a background thread that loads the file
with ``Classifier.open`` (contract, metadata against the graph, warm-up and the backend's own checks),
runs the ``--canary`` photos through it, and only then hands it to the loop::

    slot = ModelSlot(classifier, model_path, load=lambda path: Classifier.open(path), canary=Canary.read(dir))
    slot.start()                        # tells the listeners the running model's sha256, waits for requests
    slot.request()                      # from a signal handler: only sets a flag and an event
    classifier = slot.adopt() or classifier   # the loop, between frames: the new model once it is ready
    slot.close()

While the new model loads the loop keeps classifying with the old one; a model that cannot be loaded, or
that scores below the old one on the canary photos (or below ``--canary-min``), is refused in one log
line and the old one keeps running. Every swap and refusal (both models' sha256, the canary scores)
goes to the listeners (the live view, Prometheus, MQTT) and, under systemd, to
``$STATE_DIRECTORY/active-model.json``, which ``edge-service deploy`` reads (docs/model-updates.md).
"""

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, NamedTuple, Optional, Tuple

log = logging.getLogger("edge-classify")

WATCH_EVERY_S = 2.0  # --watch-model polls the file's (inode, mtime, size) this often
CANARY_SUFFIXES = (".jpg", ".jpeg", ".png")
CANARY_MAX_IMAGES = 1000
STATE_FILE = "active-model.json"  # in $STATE_DIRECTORY (systemd's StateDirectory=)

Listener = Callable[[Dict[str, Any]], None]


def add_model_swap_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of model updates while running (streams only)."""
    group = parser.add_argument_group("model updates while running (cameras, videos, streams)")
    group.add_argument("--watch-model", action="store_true",
                       help="reload the model when its file is replaced (polled every 2 s); SIGHUP and "
                            "`systemctl reload` always reload it")
    group.add_argument("--canary", type=Path, metavar="DIR",
                       help="photos in DIR/<label>/*.jpg|png: a new model must score at least the running "
                            "model's accuracy on them, or it is refused")
    group.add_argument("--canary-min", type=float, metavar="P",
                       help="with --canary: the accuracy (0 to 1) a new model must reach instead")
    group.add_argument("--mqtt-allow-model-updates", action="store_true",
                       help="with --mqtt: take a model ordered on <prefix>/<source>/model/set as "
                            "{\"url\": \"https://...\", \"sha256\": \"...\"} (fetched, verified, checked like a "
                            "reload; on success it replaces the --model file)")


def check_swap_settings(settings: Any) -> Optional[str]:
    """What is wrong with the model-update flags (``edge.settings.check_settings``)."""
    given = (settings.watch_model or settings.canary is not None or settings.canary_min is not None
             or settings.mqtt_allow_model_updates)
    if given and not settings.streaming:
        return "--watch-model and --canary are for cameras, videos and streams (--camera, --source), not --image"
    if settings.mqtt_allow_model_updates and (settings.telemetry is None or not settings.telemetry.mqtt):
        return "--mqtt-allow-model-updates goes with --mqtt URL"
    if settings.canary_min is not None:
        if settings.canary is None:
            return "--canary-min goes with --canary DIR"
        if not 0.0 <= settings.canary_min <= 1.0:
            return f"--canary-min is an accuracy between 0 and 1, not {settings.canary_min}"
    if settings.canary is not None:
        try:
            Canary.read(settings.canary)
        except CanaryError as exc:
            return str(exc)
    return None


class CanaryError(ValueError):
    """A --canary folder that cannot be used (one line)."""


class Canary:
    """Photos of known labels (``DIR/<label>/*.jpg``): a new model's accuracy on them, against the old one's."""

    def __init__(self, folder: Path, items: List[Tuple[Path, str]]) -> None:
        self.folder = folder
        self.items = items

    @classmethod
    def read(cls, folder: Path) -> "Canary":
        if not folder.is_dir():
            raise CanaryError(f"--canary {folder}: not a folder of DIR/<label>/*.jpg photos")
        items = sorted((path, label.name) for label in folder.iterdir() if label.is_dir()
                       for path in label.iterdir() if path.suffix.lower() in CANARY_SUFFIXES and path.is_file())
        if not items:
            raise CanaryError(f"--canary {folder}: no photos in DIR/<label>/*.jpg|png")
        if len(items) > CANARY_MAX_IMAGES:
            raise CanaryError(f"--canary {folder}: {len(items)} photos; at most {CANARY_MAX_IMAGES}")
        return cls(folder, items)

    def accuracy(self, classifier: Any) -> float:
        """The fraction of photos whose top-1 label is their folder's name (an unreadable photo counts wrong)."""
        import cv2

        right = 0
        for path, label in self.items:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None and classifier.classify(image).label == label:
                right += 1
        return right / len(self.items)


class Outcome(NamedTuple):
    """What a reload gave: a classifier ready to swap in, or the reason it was refused; and the event."""

    classifier: Any
    event: Dict[str, Any]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_signature(path: Path) -> Optional[Tuple[int, float, int]]:
    try:
        st = os.stat(str(path))
    except OSError:
        return None
    return st.st_ino, st.st_mtime, st.st_size


class ModelSlot:
    """The loop's classifier, and the thread that loads, checks and hands over its replacement."""

    def __init__(self, classifier: Any, path: Path, load: Callable[[Path], Any], canary: Optional[Canary] = None,
                 canary_min: Optional[float] = None, watch: bool = False,
                 state_file: Optional[Path] = None) -> None:
        self.classifier = classifier
        self.path = path
        self.sha256: Optional[str] = None
        self.listeners: List[Listener] = []
        self.swaps = self.refusals = 0
        self.last_swap: Optional[Dict[str, Any]] = None
        self.last_refusal: Optional[Dict[str, Any]] = None
        self._load = load
        self._canary = canary
        self._canary_min = canary_min
        self._canary_cache: Dict[str, float] = {}  # sha256 -> accuracy of the running model
        self._watch = watch
        self._state_file = state_file
        self._seen = file_signature(path)  # the file as the running model was loaded from it
        try:
            self.sha256 = file_sha256(path)  # here, not on the thread: the file may be replaced before it runs
        except OSError as exc:
            log.warning("model %s: cannot hash it (%s)", path, exc.strerror or exc)
        self._requested = threading.Event()
        self._closing = threading.Event()
        self._ready: Deque[Outcome] = deque()  # handed from the loader thread to the loop thread
        self._reload_wanted = False
        self._latest_sha = self.sha256  # the loader thread's view: the newest model it handed over
        self._orders: Deque[Any] = deque()  # edge.model.remote.Order, from MQTT (--mqtt-allow-model-updates)
        self._thread = threading.Thread(target=self._run, name="edge-model-loader", daemon=True)

    @classmethod
    def from_environment(cls, classifier: Any, path: Path, load: Callable[[Path], Any], settings: Any) -> "ModelSlot":
        """A slot for ``settings``' flags; under systemd it keeps ``$STATE_DIRECTORY/active-model.json``."""
        canary = Canary.read(settings.canary) if settings.canary is not None else None
        state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return cls(classifier, path, load, canary, settings.canary_min, settings.watch_model,
                   Path(state_dir) / STATE_FILE if state_dir else None)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Ask for a reload (safe in a signal handler: it only sets a flag and an event)."""
        self._reload_wanted = True
        self._requested.set()

    def order(self, payload: bytes) -> None:
        """A model ordered over MQTT (``edge.model.remote``): fetched, checked and swapped in on the loader thread."""
        from edge.model.remote import OrderError, parse_order

        try:
            self._orders.append(parse_order(payload))
        except OrderError as exc:
            self._ready.append(Outcome(None, {"event": "refusal", "sha256": None, "old_sha256": self.sha256,
                                              "reason": str(exc), "time": round(time.time(), 3)}))
            return
        self._requested.set()

    def adopt(self) -> Optional[Any]:
        """On the loop thread, between frames: the new classifier when one is ready, else None; tells listeners."""
        if not self._ready:
            return None
        outcome = self._ready.popleft()
        if outcome.classifier is not None:
            old, self.classifier = self.classifier, outcome.classifier
            self.sha256 = outcome.event["sha256"]
            old.release()  # its callers (edge.cli) still hold the object: the runtime goes now
        self._tell(outcome.event)
        return outcome.classifier

    def status(self) -> Dict[str, Any]:
        """The facts ``/api/status``, MQTT and the state file carry."""
        spec = getattr(self.classifier, "spec", None)
        return {"sha256": self.sha256, "file": str(self.path), "arch": getattr(spec, "arch", None),
                "precision": getattr(spec, "precision", None), "labels": getattr(spec, "num_classes", None),
                "swaps": self.swaps, "refusals": self.refusals, "last_swap": self.last_swap,
                "last_refusal": self.last_refusal, "pid": os.getpid(), "time": round(time.time(), 3)}

    def close(self) -> None:
        self._closing.set()
        self._requested.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    # -- the loader thread

    def _run(self) -> None:
        self._ready.append(Outcome(None, {"event": "active", "sha256": self.sha256, "file": str(self.path)}))
        while not self._closing.is_set():
            woken = self._requested.wait(WATCH_EVERY_S if self._watch else None)
            if self._closing.is_set():
                return
            self._requested.clear()
            while self._orders:
                self._ready.append(self._fetch(self._orders.popleft()))
            reload, self._reload_wanted = self._reload_wanted, False
            if not woken and self._replaced():
                log.info("model %s was replaced: reloading it", self.path)
                reload = True
            if reload:
                self._seen = file_signature(self.path)
                self._ready.append(self._reload())

    def _replaced(self) -> bool:
        """--watch-model: the file has another (inode, mtime, size) than the one loaded, and keeps it a moment."""
        now = file_signature(self.path)
        if now is None or now == self._seen:
            return False
        time.sleep(min(WATCH_EVERY_S, 0.5))  # let a copy in place finish before reading it
        return file_signature(self.path) == now

    def _reload(self) -> Outcome:
        started = time.perf_counter()
        old_sha = self._latest_sha
        event = {"file": str(self.path), "old_sha256": old_sha, "time": round(time.time(), 3)}
        try:
            new_sha = file_sha256(self.path)
        except OSError as exc:
            return self._refuse(event, None, f"cannot read {self.path}: {exc.strerror or exc}")
        event["sha256"] = new_sha
        if new_sha == old_sha:
            log.info("model %s: unchanged (sha256 %s), nothing to swap", self.path, new_sha[:12])
            return Outcome(None, dict(event, event="unchanged"))
        return self._check(self.path, new_sha, event, started)

    def _check(self, path: Path, new_sha: str, event: Dict[str, Any], started: float) -> Outcome:
        """Load ``path`` beside the running model, run the canary: a classifier to swap in, or a refusal."""
        old_sha = self._latest_sha
        try:
            candidate = self._load(path)
        except Exception as exc:  # any failure to load refuses the model; the old one keeps running
            return self._refuse(event, new_sha, _one_line(exc))
        event["load_ms"] = round((time.perf_counter() - started) * 1e3, 1)
        if self._canary is not None:
            problem = self._check_canary(candidate, old_sha, event)
            if problem:
                return self._refuse(event, new_sha, problem)
        event["ready_ms"] = round((time.perf_counter() - started) * 1e3, 1)
        self._latest_sha = new_sha
        return Outcome(candidate, dict(event, event="swap"))

    def _fetch(self, order: Any) -> Outcome:
        """An MQTT order: download beside the model, verify, check; on success the file replaces ``--model``
        (the one before kept as ``<model>.previous``), so a restart runs it too."""
        from edge.model.remote import OrderError, fetch

        started = time.perf_counter()
        event = {"file": str(self.path), "old_sha256": self._latest_sha, "sha256": order.sha256, "source": order.url,
                 "time": round(time.time(), 3)}
        if order.sha256 == self._latest_sha:
            return Outcome(None, dict(event, event="unchanged"))
        refused = self.last_refusal or {}
        if refused.get("sha256") == order.sha256 and refused.get("source") == order.url:
            return Outcome(None, dict(event, event="unchanged"))  # a retained order, after a reconnect
        try:
            handle, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".download{self.path.suffix}",
                                            dir=str(self.path.parent))
            os.close(handle)
        except OSError as exc:
            return self._refuse(event, order.sha256, f"cannot write beside {self.path}: {exc.strerror or exc}")
        download = Path(name)
        try:
            fetch(order, download)
            outcome = self._check(download, order.sha256, event, started)
            if outcome.classifier is not None:
                try:
                    self._install(download)
                except OSError:
                    self._latest_sha = event["old_sha256"]
                    raise
            return outcome
        except (OrderError, OSError) as exc:
            return self._refuse(event, order.sha256, _one_line(exc))
        finally:
            with contextlib.suppress(OSError):
                download.unlink()

    def _install(self, download: Path) -> None:
        """``download`` becomes the ``--model`` file; the file before is kept as ``<model>.previous``."""
        previous = self.path.with_name(self.path.name + ".previous")
        with contextlib.suppress(FileNotFoundError):
            if previous.exists():
                previous.unlink()
            os.link(str(self.path), str(previous))
        os.chmod(str(download), 0o644)
        os.replace(str(download), str(self.path))
        self._seen = file_signature(self.path)

    def _check_canary(self, candidate: Any, old_sha: Optional[str], event: Dict[str, Any]) -> Optional[str]:
        canary = self._canary
        assert canary is not None
        new_score = canary.accuracy(candidate)
        if self._canary_min is not None:
            needed, against = self._canary_min, f"--canary-min {self._canary_min:g}"
        else:
            key = old_sha or ""
            if key not in self._canary_cache:
                self._canary_cache = {key: canary.accuracy(self.classifier)}
            needed, against = self._canary_cache[key], "the running model's"
            event["canary_old"] = round(needed, 4)
        event["canary_new"] = round(new_score, 4)
        if new_score + 1e-9 < needed:
            return f"canary accuracy {new_score:.1%} is below {against} {needed:.1%} on {len(canary.items)} photos"
        return None

    def _refuse(self, event: Dict[str, Any], new_sha: Optional[str], reason: str) -> Outcome:
        event = dict(event, event="refusal", sha256=new_sha, reason=reason)
        return Outcome(None, event)

    # -- the loop thread

    def _tell(self, event: Dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "swap":
            self.swaps += 1
            self.last_swap = event
            log.info("model swapped: %s -> %s (%s; load and checks %.0f ms%s)", _short(event.get("old_sha256")),
                     _short(event.get("sha256")), self.path, event.get("ready_ms", 0.0), _canary_text(event))
        elif kind == "refusal":
            self.refusals += 1
            self.last_refusal = event
            log.warning("model refused, %s keeps running: %s (%s -> %s%s)", _short(event.get("old_sha256")),
                        event.get("reason"), _short(event.get("old_sha256")), _short(event.get("sha256")),
                        _canary_text(event))
        self._write_state()
        facts = dict(self.status(), event=event)
        for listener in self.listeners:
            try:
                listener(facts)
            except Exception as exc:  # a listener (MQTT, metrics) must not stop the loop
                log.warning("model event not delivered: %s", _one_line(exc))

    def _write_state(self) -> None:
        """``active-model.json`` written atomically (a reader never sees half a file)."""
        if self._state_file is None:
            return
        try:
            write_json_atomically(self._state_file, self.status())
        except OSError as exc:
            log.warning("cannot write %s: %s", self._state_file, exc.strerror or exc)


def write_json_atomically(path: Path, facts: Dict[str, Any]) -> None:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(facts, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(name, str(path))
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


_EARLY_RELOAD = threading.Event()  # a SIGHUP that came while the first model was loading (hold_reloads)


def hold_reloads() -> None:
    """From now until :func:`reload_on_sighup` takes over, a SIGHUP is remembered instead of ending the process
    (its default action): ``systemctl reload`` while the first model loads (a TensorRT build takes minutes)
    must not kill the service. The reload it asked for is made once the loop runs."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, _frame: _EARLY_RELOAD.set())


@contextlib.contextmanager
def reload_on_sighup(slot: ModelSlot) -> Iterator[None]:
    """SIGHUP (``systemctl reload``) asks ``slot`` for a reload (one held since start-up, at once); the old
    handler comes back after."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    previous = signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGHUP, lambda signum, _frame: slot.request())
    if _EARLY_RELOAD.is_set():
        _EARLY_RELOAD.clear()
        log.info("a reload was asked for while the model loaded: reloading it now")
        slot.request()
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def _short(sha: Optional[str]) -> str:
    return sha[:12] if sha else "?"


def _canary_text(event: Dict[str, Any]) -> str:
    if "canary_new" not in event:
        return ""
    old = event.get("canary_old")
    return f"; canary new {event['canary_new']:.1%}" + (f" old {old:.1%}" if old is not None else "")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
