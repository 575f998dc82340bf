"""A bounded, ordered on-disk queue of MQTT messages that survives a broker outage and a restart.

Every message the loop hands to MQTT is appended here first (write-ahead), sent from the oldest
unsent one on, and forgotten once the broker has acknowledged it::

    spool = Spool(Path("/var/lib/edge-classify/mqtt"), max_bytes=64 << 20)
    spool.append([Message("edge/cam/label", '{"label": "tabby"}')])
    batch = spool.take(10)        # [(position, message)], oldest first; taken, not yet acknowledged
    spool.acknowledge(batch[0][0])  # everything up to there is done (the cursor moves on, disk is freed)
    spool.rewind()                # the connection dropped: what was taken goes again, in order
    spool.close()                 # the cursor is saved; the next run starts where this one stopped

The files: ``seg-<number>.jsonl`` segments of one JSON object per line, appended with one ``write``
each (a crash leaves at most a torn last line, which the next open cuts off and counts), and
``cursor.json`` (the first unacknowledged position), replaced atomically. When the segments pass
``max_bytes`` the oldest segment is deleted whole and its unsent messages are counted in
``dropped``: a long outage keeps the newest results, and says how many old ones it gave up.
Not thread-safe: one thread (the MQTT worker) owns it.
"""


import errno
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

try:
    import fcntl
except ImportError:  # not on Windows; the lock is then skipped
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CURSOR_FILE = "cursor.json"
LOCK_FILE = "lock"
SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".jsonl"
SEGMENTS_PER_BOUND = 8  # the bound is enforced a segment at a time, so a segment is an eighth of it
MIN_SEGMENT_BYTES = 4096
CURSOR_SAVE_S = 1.0  # how stale the saved cursor may get: a crash re-sends at most this much

Position = Tuple[int, int]  # (segment number, byte offset of the message's end)


class SpoolError(OSError):
    """The spool folder cannot be used (not writable, or another edge-classify holds it)."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool = False

    def to_line(self) -> bytes:
        record = {"t": self.topic, "p": self.payload}
        if self.retain:
            record["r"] = True
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    @classmethod
    def from_line(cls, line: bytes) -> "Message":
        record = json.loads(line.decode("utf-8"))
        return cls(str(record["t"]), str(record["p"]), bool(record.get("r", False)))


@dataclass
class _Segment:
    number: int
    path: Path
    size: int
    count: int


class Spool:
    """Messages in order on disk, at most ``max_bytes`` of them (see the module docstring)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max(int(max_bytes), 2 * MIN_SEGMENT_BYTES)
        self.segment_bytes = max(self.max_bytes // SEGMENTS_PER_BOUND, MIN_SEGMENT_BYTES)
        self.dropped = 0  # messages deleted unsent: past the bound, or torn by a crash
        self._lock_fd: Optional[int] = None
        self._append_fd: Optional[int] = None
        self._segments: List[_Segment] = []
        self._cursor: Position = (0, 0)  # first unacknowledged message
        self._read: Position = (0, 0)  # next message to take
        self._saved: Position = (-1, -1)
        self._saved_at = 0.0
        self._pending_after_cursor = 0
        self._open()

    # ------------------------------------------------------------------------------------ public

    @property
    def queued(self) -> int:
        """Messages on disk not yet acknowledged by the broker."""
        return self._pending_after_cursor

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    def append(self, messages: List[Message]) -> None:
        for message in messages:
            line = message.to_line()
            segment = self._writable_segment(len(line))
            os.write(self._append_fd, line)  # one write per line: a crash cannot interleave two messages
            segment.size += len(line)
            segment.count += 1
            self._pending_after_cursor += 1
        self._enforce_bound()

    def take(self, limit: int) -> List[Tuple[Position, Message]]:
        """Up to ``limit`` messages after the last one taken, oldest first, each with its position."""
        out: List[Tuple[Position, Message]] = []
        while len(out) < limit:
            segment = self._segment(self._read[0])
            if segment is None:  # the position is before the first segment (a new or emptied spool)
                later = [s for s in self._segments if s.number > self._read[0]]
                if not later:
                    break
                self._read = (later[0].number, 0)
                continue
            if self._read[1] >= segment.size:
                later = [s for s in self._segments if s.number > segment.number]
                if not later:
                    break
                self._read = (later[0].number, 0)
                continue
            out.extend(self._read_lines(segment, limit - len(out)))
        return out

    def acknowledge(self, position: Position) -> None:
        """Every message up to and including the one at ``position`` has reached the broker."""
        if position <= self._cursor:
            return
        done = self._count_between(self._cursor, position)
        self._pending_after_cursor = max(0, self._pending_after_cursor - done)
        self._cursor = position
        self._delete_finished_segments()
        self._save_cursor(force=False)

    def rewind(self) -> None:
        """Take again from the first unacknowledged message (after a lost connection)."""
        self._read = self._cursor

    def close(self) -> None:
        self._save_cursor(force=True)
        self._release()

    def _release(self) -> None:
        for fd in (self._append_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._append_fd = self._lock_fd = None

    # ------------------------------------------------------------------------------------ opening

    def _open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(str(self.folder / LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use the MQTT spool folder {self.folder}: {exc.strerror or exc}") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._lock_fd)
                self._lock_fd = None
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise SpoolError(f"the MQTT spool {self.folder} is in use by another edge-classify: give "
                                     "each instance its own --mqtt-spool") from None
                raise SpoolError(f"cannot lock the MQTT spool {self.folder}: {exc.strerror or exc}") from None
        try:
            for path in sorted(self.folder.glob(SEGMENT_PREFIX + "*" + SEGMENT_SUFFIX)):
                number = _segment_number(path)
                if number is not None:
                    self._segments.append(self._scan(number, path))
        except OSError as exc:
            self._release()
            raise SpoolError(f"cannot read the MQTT spool {self.folder}: {exc.strerror or exc}") from None
        self._cursor = self._load_cursor()
        self._read = self._cursor
        self._delete_finished_segments()
        self._pending_after_cursor = self._count_after(self._cursor)
        if self._pending_after_cursor:
            log.info("MQTT spool %s: %d messages from before are waiting to be sent", self.folder,
                     self._pending_after_cursor)

    def _scan(self, number: int, path: Path) -> _Segment:
        """A segment as found: a torn last line (a crash mid-write) is cut off and counted as dropped."""
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("MQTT spool %s: cutting off a half-written message (a crash while writing)", path.name)
            self.dropped += 1
            with open(str(path), "r+b") as handle:
                handle.truncate(end)
        return _Segment(number, path, end, data[:end].count(b"\n"))

    def _load_cursor(self) -> Position:
        first = (self._segments[0].number, 0) if self._segments else (0, 0)
        try:
            record = json.loads((self.folder / CURSOR_FILE).read_text(encoding="utf-8"))
            cursor = (int(record["segment"]), int(record["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return first  # no cursor yet, or an unreadable one: send everything (duplicates, never losses)
        segment = self._segment(cursor[0])
        if segment is None:
            return first if cursor < first else (cursor[0], 0)
        return (cursor[0], min(cursor[1], segment.size))

    # ------------------------------------------------------------------------------------ internals

    def _segment(self, number: int) -> Optional[_Segment]:
        for segment in self._segments:
            if segment.number == number:
                return segment
        return None

    def _writable_segment(self, incoming: int) -> _Segment:
        """The newest segment, or a new one when this line would take it past ``segment_bytes``."""
        last = self._segments[-1] if self._segments else None
        if last is None or (last.size > 0 and last.size + incoming > self.segment_bytes):
            number = last.number + 1 if last is not None else max(self._cursor[0], 1)
            last = _Segment(number, self.folder / f"{SEGMENT_PREFIX}{number:012d}{SEGMENT_SUFFIX}", 0, 0)
            self._segments.append(last)
            self._open_for_append(last)
        elif self._append_fd is None:
            self._open_for_append(last)
        return last

    def _open_for_append(self, segment: _Segment) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
        self._append_fd = os.open(str(segment.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _read_lines(self, segment: _Segment, limit: int) -> List[Tuple[Position, Message]]:
        out: List[Tuple[Position, Message]] = []
        with open(str(segment.path), "rb") as handle:
            handle.seek(self._read[1])
            while len(out) < limit and handle.tell() < segment.size:
                line = handle.readline()
                end = handle.tell()
                self._read = (segment.number, end)
                try:
                    out.append(((segment.number, end), Message.from_line(line)))
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    self.dropped += 1  # not ours, or damaged on disk: skip it rather than stop the queue
                    log.warning("MQTT spool %s: skipping an unreadable message", segment.path.name)
        return out

    def _enforce_bound(self) -> None:
        while self.size > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments[0]
            unsent = self._count_after(self._cursor, only=oldest)
            self._remove(oldest)
            self.dropped += unsent
            self._pending_after_cursor -= unsent
            log.warning("MQTT spool %s is full (%d bytes): dropped the %d oldest unsent messages (%d in all)",
                        self.folder, self.max_bytes, unsent, self.dropped)
            following = self._segments[0].number
            if self._cursor[0] <= oldest.number:
                self._cursor = (following, 0)
            if self._read[0] <= oldest.number:
                self._read = (following, 0)
            self._save_cursor(force=True)

    def _delete_finished_segments(self) -> None:
        """Segments wholly before the cursor are done: delete them (the one being appended to stays)."""
        while len(self._segments) > 1:
            head = self._segments[0]
            if head.number < self._cursor[0] or (head.number == self._cursor[0] and self._cursor[1] >= head.size):
                if head.number == self._cursor[0]:
                    self._cursor = (self._segments[1].number, 0)
                    if self._read < self._cursor:
                        self._read = self._cursor
                self._remove(head)
            else:
                break

    def _remove(self, segment: _Segment) -> None:
        self._segments.remove(segment)
        try:
            os.unlink(str(segment.path))
        except FileNotFoundError:
            pass

    def _count_after(self, position: Position, only: Optional[_Segment] = None) -> int:
        total = 0
        for segment in [only] if only is not None else self._segments:
            if segment.number > position[0]:
                total += segment.count
            elif segment.number == position[0]:
                total += self._lines_from(segment, position[1])
        return total

    def _count_between(self, start: Position, end: Position) -> int:
        total = 0
        for segment in self._segments:
            if start[0] <= segment.number <= end[0]:
                begin = start[1] if segment.number == start[0] else 0
                stop = end[1] if segment.number == end[0] else segment.size
                total += self._lines_in(segment, begin, stop)
        return total

    def _lines_from(self, segment: _Segment, offset: int) -> int:
        return segment.count if offset <= 0 else self._lines_in(segment, offset, segment.size)

    @staticmethod
    def _lines_in(segment: _Segment, begin: int, end: int) -> int:
        if end <= begin:
            return 0
        with open(str(segment.path), "rb") as handle:
            handle.seek(begin)
            return handle.read(end - begin).count(b"\n")

    def _save_cursor(self, force: bool) -> None:
        now = time.monotonic()
        if self._cursor == self._saved or (not force and now - self._saved_at < CURSOR_SAVE_S):
            return
        target = self.folder / CURSOR_FILE
        temporary = self.folder / (CURSOR_FILE + ".tmp")
        try:
            temporary.write_text(json.dumps({"segment": self._cursor[0], "offset": self._cursor[1]}),
                                 encoding="utf-8")
            os.replace(str(temporary), str(target))  # a reader sees the old cursor or the new, never half
        except OSError as exc:
            log.warning("MQTT spool: cannot save the cursor in %s: %s", self.folder, exc.strerror or exc)
            return
        self._saved, self._saved_at = self._cursor, now


def _segment_number(path: Path) -> Optional[int]:
    digits = path.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None
