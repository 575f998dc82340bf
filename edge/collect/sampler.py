"""``--collect DIR``: keep the frames the model is unsure about (or that a sampler picks) for review and training.

    edge-classify --model m.onnx --camera 0 --collect /data/collect --collect-when uncertain:0.6:0.15,changed
    edge-collect review /data/collect          # then confirm, relabel, discard (edge.collect.cli), or /review

Samplers (``--collect-when``, comma-separated; a frame is kept when any matches and every limit allows):
  ``uncertain[:P[:MARGIN]]``  top-1 probability below P (default 0.5) or top-1 minus top-2 below MARGIN (0.1)
  ``changed``                 the label shown differs from the previous frame's
  ``label=NAME``              the model says NAME
  ``every=N``                 every N-th frame
  ``rate=R``                  a random share R of frames (seeded: ``--collect-seed``)
Limits: ``--collect-interval S`` between kept frames, ``--collect-max N`` unreviewed frames in all and
``--collect-max-per-class N`` per label, near-duplicates (a 64-bit dHash within ``--collect-dedup BITS`` of
one of the last few kept), and ``--collect-budget MB`` of unreviewed JPEGs (the oldest go first, counted).

The loop never waits for this: :meth:`Collector.write` only decides and puts a reference to the frame
in a queue bounded by bytes (``QUEUE_BYTES``) (a full queue drops the frame, counted); one writer thread encodes the ORIGINAL
full frame as a JPEG, writes it under a temporary name and renames it into
``DIR/unreviewed/<label>/<time>-<source>.jpg``, then appends its manifest line (``edge.collect.folder``).
"""

import argparse
import hashlib
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from edge.collect.folder import (IMAGE_SUFFIX, MANIFEST, UNREVIEWED, append_line, safe_name, unreviewed)

log = logging.getLogger("edge-classify")

DEFAULT_WHEN = "uncertain"
DEFAULT_P = 0.5
DEFAULT_MARGIN = 0.1
DEFAULT_INTERVAL_S = 1.0
DEFAULT_MAX = 2000
DEFAULT_DEDUP_BITS = 6
DEFAULT_BUDGET_MB = 1000.0
DEDUP_RECENT = 8  # kept frames a new one is compared with
RECOUNT_S = 30.0  # how often the writer recounts DIR (frames reviewed meanwhile free their place in the caps)
QUEUE_BYTES = 64 << 20  # full frames waiting for the writer, in all (about ten 1080p frames of 6 MB)
JPEG_QUALITY = 92


@dataclass(frozen=True)
class Samplers:
    """Which frames are candidates (``--collect-when``)."""

    uncertain: Optional[Tuple[float, float]] = None  # (P, MARGIN)
    changed: bool = False
    labels: Tuple[str, ...] = ()
    every: int = 0
    rate: float = 0.0


def parse_when(text: str) -> Samplers:
    """``--collect-when``'s value as :class:`Samplers` (argparse type: ValueError -> one usage line)."""
    values: Dict[str, Any] = {"labels": []}
    for part in (p.strip() for p in str(text).split(",")):
        name, _, rest = part.partition("=") if "=" in part else part.partition(":")
        name = name.strip().lower()
        if name == "uncertain":
            numbers = [float(x) for x in rest.split(":")] if rest else []
            if len(numbers) > 2 or not all(0.0 <= n <= 1.0 for n in numbers):
                raise argparse.ArgumentTypeError(f"uncertain[:P[:MARGIN]] takes probabilities 0-1, not {part!r}")
            numbers += [DEFAULT_P, DEFAULT_MARGIN][len(numbers):]
            values["uncertain"] = (numbers[0], numbers[1])
        elif name == "changed" and not rest:
            values["changed"] = True
        elif name == "label" and rest:
            values["labels"].append(rest)
        elif name == "every" and rest.isdigit() and int(rest) >= 1:
            values["every"] = int(rest)
        elif name == "rate" and _probability(rest):
            values["rate"] = float(rest)
        else:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a sampler: uncertain[:P[:MARGIN]], changed, label=NAME, every=N, rate=R")
    values["labels"] = tuple(values["labels"])
    return Samplers(**values)


def _probability(text: str) -> bool:
    try:
        return 0.0 < float(text) <= 1.0
    except ValueError:
        return False


@dataclass(frozen=True)
class CollectOptions:
    """The ``--collect`` flags."""

    dir: Path
    when: Samplers = field(default_factory=lambda: parse_when(DEFAULT_WHEN))
    interval_s: float = DEFAULT_INTERVAL_S
    max_total: int = DEFAULT_MAX
    max_per_class: int = 0  # 0: no cap per class
    dedup_bits: int = DEFAULT_DEDUP_BITS  # 0: keep near-duplicates
    budget_mb: float = DEFAULT_BUDGET_MB
    seed: int = 0

    @classmethod
    def from_args(cls, args: Any) -> "Optional[CollectOptions]":
        if getattr(args, "collect", None) is None:
            return None
        return cls(Path(args.collect), args.collect_when or parse_when(DEFAULT_WHEN), args.collect_interval,
                   args.collect_max, args.collect_max_per_class, args.collect_dedup, args.collect_budget,
                   args.collect_seed)


def add_collect_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("collecting frames to review and train on (see docs/collect.md)")
    group.add_argument("--collect", metavar="DIR",
                       help="keep frames the samplers pick, full size, in DIR/unreviewed/<label>/ with a manifest; "
                            "review them with edge-collect or --serve's /review page")
    group.add_argument("--collect-when", type=parse_when, metavar="S[,S...]",
                       help="samplers: uncertain[:P[:MARGIN]] (default, P 0.5, MARGIN 0.1), changed, label=NAME, "
                            "every=N, rate=R")
    group.add_argument("--collect-interval", type=float, default=DEFAULT_INTERVAL_S, metavar="S",
                       help=f"at least S seconds between kept frames (default {DEFAULT_INTERVAL_S:g})")
    group.add_argument("--collect-max", type=int, default=DEFAULT_MAX, metavar="N",
                       help=f"at most N unreviewed frames (default {DEFAULT_MAX})")
    group.add_argument("--collect-max-per-class", type=int, default=0, metavar="N",
                       help="at most N unreviewed frames per predicted label (default: no cap)")
    group.add_argument("--collect-dedup", type=int, default=DEFAULT_DEDUP_BITS, metavar="BITS",
                       help=f"skip a frame whose 64-bit dHash is within BITS of one of the last {DEDUP_RECENT} kept "
                            f"(default {DEFAULT_DEDUP_BITS}; 0: off)")
    group.add_argument("--collect-budget", type=float, default=DEFAULT_BUDGET_MB, metavar="MB",
                       help=f"unreviewed JPEGs take at most MB megabytes; the oldest go first "
                            f"(default {DEFAULT_BUDGET_MB:g})")
    group.add_argument("--collect-seed", type=int, default=0, metavar="N", help="seed of rate=R (default 0)")


def check_collect_options(options: Optional[CollectOptions]) -> Optional[str]:
    """Why ``--collect`` cannot work as given, or None (before the model loads)."""
    if options is None:
        return None
    checks = (
        (not options.interval_s >= 0, f"--collect-interval must be 0 or more seconds, not {options.interval_s}"),
        (options.max_total < 1, f"--collect-max must be at least 1, not {options.max_total}"),
        (options.max_per_class < 0, f"--collect-max-per-class must be 0 (no cap) or more, not {options.max_per_class}"),
        (not 0 <= options.dedup_bits <= 64, f"--collect-dedup must be 0 to 64 bits, not {options.dedup_bits}"),
        (not options.budget_mb > 0, f"--collect-budget must be more than 0 MB, not {options.budget_mb}"),
    )
    for bad, message in checks:
        if bad:
            return message
    target = options.dir
    if target.exists() and not target.is_dir():
        return f"--collect {target}: not a folder"
    existing = next((p for p in [target, *target.absolute().parents] if p.exists()), None)
    if existing is None or not os.access(str(existing), os.W_OK):
        return f"--collect {target}: not writable"
    return None


def dhash(image_bgr: Any) -> int:
    """The 64-bit difference hash of a 9x8 grey thumbnail (near-identical frames differ in a few bits)."""
    import cv2

    small = cv2.resize(image_bgr, (9, 8), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def margin(prediction: Any) -> float:
    """Top-1 minus top-2 probability (1.0 with a single class)."""
    probabilities = np.asarray(prediction.probabilities, dtype=np.float64).ravel()
    if probabilities.size < 2:
        return 1.0
    top2 = np.partition(probabilities, probabilities.size - 2)[-2:]
    return float(top2[1] - top2[0])


class Kept(dict):
    """What the writer needs for one frame (the loop's own image array, never written to)."""


class Collector:
    """The sink: ``write(result)`` decides and enqueues; the writer thread encodes, writes and prunes."""

    def __init__(self, options: CollectOptions, model: Optional[Path] = None, clock: Any = time.monotonic) -> None:
        self.options = options
        self.root = options.dir
        self.model = model
        self.clock = clock
        (self.root / UNREVIEWED).mkdir(parents=True, exist_ok=True)
        self.counts: Dict[str, int] = {"frames": 0, "kept": 0, "interval": 0, "capped": 0, "duplicate": 0,
                                       "queue_full": 0, "evicted": 0, "errors": 0}
        self.by_sampler: Dict[str, int] = {}
        self._random = random.Random(options.seed)
        # Per source (several sources share this sink): the last label seen, when a frame was last kept, and the
        # hashes of the last few kept, so one camera's frames never hold back or de-duplicate another's.
        self._last_label: Dict[str, str] = {}
        self._last_kept: Dict[str, float] = {}
        self._recent: Dict[str, Deque[int]] = {}
        self._recount()
        self._sha256: Optional[str] = None
        self._queue: "queue.Queue[Optional[Kept]]" = queue.Queue()  # bounded by bytes: _queued
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="edge-collect", daemon=True)
        self._writer.start()

    def _recount(self) -> None:
        """The caps' and the budget's counts from DIR itself (frames reviewed meanwhile have left it)."""
        existing = unreviewed(self.root)
        per_class: Dict[str, int] = {}
        files: Deque[Tuple[Path, int]] = deque()  # oldest first, for the disk budget
        for frame in existing:
            per_class[frame.label] = per_class.get(frame.label, 0) + 1
            try:
                files.append((frame.path, frame.path.stat().st_size))
            except FileNotFoundError:  # reviewed while we looked
                continue
        self._total, self._per_class, self._files = len(existing), per_class, files
        self._bytes = sum(size for _, size in files)
        self._recounted = self.clock()

    # -- the loop's side: decide, enqueue

    def write(self, result: Any) -> None:
        self.counts["frames"] += 1
        prediction, source = result.prediction, result.name
        why = self.sampler(prediction, self._last_label.get(source))
        self._last_label[source] = prediction.label
        if why is None or result.frame.image is None:
            return
        now = self.clock()
        if source in self._last_kept and now - self._last_kept[source] < self.options.interval_s:
            self.counts["interval"] += 1
            return
        label = safe_name(prediction.label)
        if self._total >= self.options.max_total or (
                self.options.max_per_class and self._per_class.get(label, 0) >= self.options.max_per_class):
            self.counts["capped"] += 1
            return
        if self.options.dedup_bits:
            digest = dhash(result.frame.image)
            recent = self._recent.setdefault(source, deque(maxlen=DEDUP_RECENT))
            if any(hamming(digest, seen) <= self.options.dedup_bits for seen in recent):
                self.counts["duplicate"] += 1
                return
            recent.append(digest)
        entry = Kept(image=result.frame.image, label=label, source=result.name, time=time.time(), why=why,
                     record=result.record, model=self.model, model_sha256=self._sha256)
        size = int(getattr(result.frame.image, "nbytes", 0))
        with self._queued_lock:
            full = self._queued + size > QUEUE_BYTES
            if not full:
                self._queued += size
        if full:
            self.counts["queue_full"] += 1
            return
        entry["size"] = size
        self._queue.put_nowait(entry)
        self._last_kept[source] = now
        self._total += 1
        self._per_class[label] = self._per_class.get(label, 0) + 1
        self.counts["kept"] += 1
        self.by_sampler[why] = self.by_sampler.get(why, 0) + 1

    def sampler(self, prediction: Any, previous_label: Optional[str] = None) -> Optional[str]:
        """The name of the first sampler that wants this frame (``previous_label``: its source's last), or None."""
        when = self.options.when
        if when.uncertain is not None:
            p, least = when.uncertain
            if prediction.score < p or margin(prediction) < least:
                return "uncertain"
        if when.changed and previous_label is not None and prediction.label != previous_label:
            return "changed"
        if prediction.label in when.labels:
            return "label"
        if when.every and self.counts["frames"] % when.every == 0:
            return "every"
        if when.rate and self._random.random() < when.rate:
            return "rate"
        return None

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()
        c = self.counts
        samplers = ", ".join(f"{k} {v}" for k, v in sorted(self.by_sampler.items())) or "none"
        log.info("collect: kept %d of %d frames in %s (%s) | skipped: interval %d, capped %d, duplicate %d, "
                 "queue full %d | evicted %d for the %g MB budget | write errors %d", c["kept"], c["frames"],
                 self.root / UNREVIEWED, samplers, c["interval"], c["capped"], c["duplicate"], c["queue_full"],
                 c["evicted"], self.options.budget_mb, c["errors"])

    # -- the writer thread

    def _write_loop(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            try:
                self._save(entry)
            except (OSError, ValueError) as exc:  # a full disk, an unencodable frame: counted, the run goes on
                self.counts["errors"] += 1
                log.warning("collect: cannot save a frame: %s", exc)
            finally:
                with self._queued_lock:
                    self._queued -= entry["size"]

    def _save(self, entry: Kept) -> None:
        import cv2

        ok, data = cv2.imencode(IMAGE_SUFFIX, entry["image"], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError("the JPEG encoder failed")
        folder = self.root / UNREVIEWED / entry["label"]
        folder.mkdir(parents=True, exist_ok=True)
        path = write_new(folder, f"{_stamp(entry['time'])}-{safe_name(entry['source'], 'frame')}", data.tobytes())
        self._files.append((path, len(data)))
        self._bytes += len(data)
        record = entry["record"]
        append_line(self.root / MANIFEST, {
            "file": f"{UNREVIEWED}/{entry['label']}/{path.name}", "time": round(entry["time"], 3),
            "source": entry["source"], "frame": record.get("frame"), "label": record.get("label"),
            "score": record.get("score"), "topk": record.get("topk"), "sampler": entry["why"],
            "model": str(entry["model"] or self.model or "") or None,
            "model_sha256": entry["model_sha256"] or self._model_sha256()})
        if self.clock() - self._recounted >= RECOUNT_S:
            self._recount()
        self._prune()

    def _prune(self) -> None:
        """Delete the oldest unreviewed frames while they take more than the budget (reviewed ones are gone)."""
        budget = self.options.budget_mb * 1e6
        while self._bytes > budget and self._files:
            path, size = self._files.popleft()
            self._bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:  # reviewed meanwhile: moved, not ours to count
                continue
            self._total -= 1
            label = path.parent.name
            self._per_class[label] = max(0, self._per_class.get(label, 0) - 1)
            self.counts["evicted"] += 1

    def model_changed(self, facts: Dict[str, Any]) -> None:
        """The running model (``edge.model.swap``'s listeners, on the loop thread): frames kept from now on carry
        its sha256, those queued before keep the one they were classified by."""
        if facts.get("sha256"):
            self._sha256 = facts["sha256"]
            self.model = Path(facts["file"]) if facts.get("file") else self.model

    def _model_sha256(self) -> Optional[str]:
        """The model file's sha256, hashed once on the writer thread (without a model slot to say it)."""
        if self.model is None:
            from edge.model.defaults import default_model_path

            self.model = default_model_path()
        if self._sha256 is None:
            digest = hashlib.sha256()
            try:
                with open(str(self.model), "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                self._sha256 = digest.hexdigest()
            except OSError:
                self._sha256 = "unreadable"
        return self._sha256


def _stamp(seconds: float) -> str:
    """UTC time, sortable, safe in a file name: 20261203T113722.123Z."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def write_new(folder: Path, stem: str, data: bytes) -> Path:
    """``data`` in a new file ``folder/stem.jpg`` (``stem-1.jpg``... if taken), written whole or not at all."""
    temporary = folder / f".{stem}.{os.getpid()}.tmp"
    with open(str(temporary), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        count = 0
        while True:
            target = folder / (f"{stem}{IMAGE_SUFFIX}" if count == 0 else f"{stem}-{count}{IMAGE_SUFFIX}")
            try:
                os.link(str(temporary), str(target))  # fails if the name is taken: never over a file
                return target
            except FileExistsError:
                count += 1
            except OSError:  # a file system without hard links (FAT): a rename, after looking
                if os.path.lexists(str(target)):
                    count += 1
                    continue
                os.replace(str(temporary), str(target))
                return target
    finally:
        if os.path.lexists(str(temporary)):
            temporary.unlink()


def collected(root: Path) -> List[Path]:
    """The unreviewed frames' files, oldest first (for tests and benchmarks)."""
    return [frame.path for frame in unreviewed(root)]
