"""A bounded, ordered on-disk queue of MQTT messages (sqlite3, WAL) that survives a broker outage and a kill.

Each message is one row, written in its own transaction before ``append`` returns: whole or absent,
even on a full disk or a ``kill -9``. Rows leave when the broker has acknowledged them::

    spool = Spool(Path("/var/lib/edge-classify/mqtt"), max_bytes=64 << 20)
    spool.append(Message("edge/cam/label", '{"label": "tabby"}'))   # False: not written (counted)
    batch = spool.take(10)       # [(row id, message)], oldest first, each handed out once per run
    spool.remove([batch[0][0]])  # acknowledged by the broker
    spool.discard(batch[1][0])   # can never be sent (a wildcard in its topic): dropped, counted
    spool.close()                # the next run hands out what is left, oldest first

Past ``max_bytes`` (the messages' bytes) the oldest rows not yet handed out are deleted and
counted in ``dropped``, as are rows that cannot be written or decoded. One process per spool:
sqlite's exclusive locking mode holds the database, and a second user gets ``SpoolError``. The
folder must be ours and writable by us alone, with no symbolic links (a root service never follows
another user's link). Old-format spools (``seg-*.jsonl``) are not migrated: a warning names them.
Thread-safe: the loop appends while the MQTT sender takes and removes.
"""

import logging
import os
import sqlite3
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

DATABASE = "spool.sqlite3"
ROW_BYTES = 32  # what a row costs beyond its topic and payload, for the bound
PAGE_BYTES = 1024  # sqlite writes whole pages: small ones write an SD card less (3 KB a message, not 8)
SCHEMA = ("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, topic BLOB NOT NULL, payload BLOB NOT NULL, "
          "retain INTEGER NOT NULL, size INTEGER NOT NULL)")


class SpoolError(OSError):
    """The spool folder cannot be used (not ours, not writable, or another edge-classify holds it)."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool = False


class Spool:
    """Messages in order in ``folder/spool.sqlite3``, at most ``max_bytes`` of them (see the module docstring)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max(int(max_bytes), 4096)
        self.dropped = 0
        self._lock = threading.Lock()
        self._taken = 0  # the newest row id handed out by take()
        self._db = _open(self.folder)
        self.queued, self.size, last = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(id), 0)"
                                                        " FROM messages").fetchone()
        self._next_id = last + 1  # ours, not sqlite's: an emptied table must not hand out an id again
        if self.queued:
            log.info("MQTT spool %s: %d messages from before are waiting to be sent", self.folder, self.queued)

    def append(self, message: Message) -> bool:
        """Write one message (True), or count it as dropped (a full disk, text that is not UTF-8)."""
        try:
            topic, payload = message.topic.encode("utf-8"), message.payload.encode("utf-8")
        except UnicodeEncodeError:
            return self._lost("a message that is not UTF-8")
        size = len(topic) + len(payload) + ROW_BYTES
        with self._lock:
            try:
                with self._db:  # one transaction: the row and the trim, or neither
                    self._db.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
                                     (self._next_id, topic, payload, int(message.retain), size))
                    trimmed, freed = self._trim(self.size + size - self.max_bytes)
            except sqlite3.Error as exc:
                return self._lost(f"cannot write {self.folder / DATABASE} ({exc})")
            self._next_id += 1
            self.queued += 1 - trimmed
            self.size += size - freed
            self.dropped += trimmed
        if trimmed:
            log.warning("MQTT spool %s is full (%d bytes): dropped the %d oldest unsent messages (%d in all)",
                        self.folder, self.max_bytes, trimmed, self.dropped)
        return True

    def take(self, limit: int) -> List[Tuple[int, Message]]:
        """Up to ``limit`` rows not handed out yet in this run, oldest first; undecodable rows are discarded."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT id, CAST(topic AS BLOB), CAST(payload AS BLOB), retain FROM messages"
                                        " WHERE id > ? ORDER BY id LIMIT ?", (self._taken, limit)).fetchall()
            except sqlite3.Error as exc:
                log.warning("MQTT spool %s: cannot read (%s)", self.folder, exc)
                return []
            self._taken = rows[-1][0] if rows else self._taken  # from here on the bound spares them
        out = []
        for row_id, topic, payload, retain in rows:
            try:
                out.append((row_id, Message(bytes(topic).decode("utf-8"), bytes(payload).decode("utf-8"),
                                            bool(retain))))
            except (TypeError, UnicodeDecodeError):
                self.discard(row_id, "it is damaged")
        return out

    def remove(self, row_ids: Sequence[int]) -> bool:
        """These rows reached the broker; False if they could not be deleted now (a full disk)."""
        with self._lock:
            return self._delete(row_ids) is not None

    def discard(self, row_id: int, why: str) -> None:
        """This row can never be sent: delete it and count it as dropped."""
        with self._lock:
            self.dropped += self._delete([row_id]) or 0
        log.warning("MQTT spool %s: dropped a message because %s (%d dropped in all)", self.folder, why, self.dropped)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _delete(self, row_ids: Sequence[int]) -> Optional[int]:
        marks = ",".join("?" * len(row_ids))
        try:
            with self._db:
                count, size = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE id IN "
                                               f"({marks})", list(row_ids)).fetchone()
                self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", list(row_ids))
        except sqlite3.Error as exc:
            log.warning("MQTT spool %s: cannot delete sent messages (%s)", self.folder, exc)
            return None
        self.queued -= count
        self.size -= size
        return count

    def _trim(self, excess: int) -> Tuple[int, int]:
        """Delete the oldest rows not handed out yet until ``excess`` bytes are freed: (rows, bytes)."""
        rows, freed, last = 0, 0, self._taken
        while freed < excess:
            batch = self._db.execute("SELECT id, size FROM messages WHERE id > ? ORDER BY id LIMIT 256",
                                     (last,)).fetchall()
            for row_id, size in batch:
                rows, freed, last = rows + 1, freed + size, row_id
                if freed >= excess:
                    break
            if not batch:
                break
        if rows:
            self._db.execute("DELETE FROM messages WHERE id > ? AND id <= ?", (self._taken, last))
        return rows, freed

    def _lost(self, why: str) -> bool:
        self.dropped += 1
        if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
            log.warning("MQTT spool %s: %s: a message dropped (%d in all)", self.folder, why, self.dropped)
        return False


def _open(folder: Path) -> sqlite3.Connection:
    """The folder checked (ours, ours alone, no links), the database opened, locked and in WAL mode."""
    _check_folder(folder)
    if list(folder.glob("seg-*.jsonl")):
        log.warning("MQTT spool %s: the seg-*.jsonl files there are an older format this version does not send; "
                    "delete them", folder)
    try:
        db = sqlite3.connect(str(folder / DATABASE), timeout=0, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open the MQTT spool {folder / DATABASE}: {exc}") from None
    try:
        db.execute(f"PRAGMA page_size={PAGE_BYTES}")  # a new file only
        db.execute("PRAGMA locking_mode=EXCLUSIVE")  # held until close: no second process, no -shm file
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # survives a kill; fsyncs at checkpoints only (SD cards)
        with db:
            db.execute("BEGIN EXCLUSIVE")
            db.execute(SCHEMA)
    except sqlite3.Error as exc:
        db.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise SpoolError(f"the MQTT spool {folder} is in use by another edge-classify: give each instance its "
                             "own --mqtt-spool") from None
        raise SpoolError(f"cannot use the MQTT spool {folder / DATABASE}: {exc}") from None
    return db


def _check_folder(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_owned(folder, os.lstat(str(folder)), directory=True)
        for name in (DATABASE, DATABASE + "-wal", DATABASE + "-journal"):
            try:
                _check_owned(folder / name, os.lstat(str(folder / name)), directory=False)
            except FileNotFoundError:
                pass
    except OSError as exc:
        if isinstance(exc, SpoolError):
            raise
        raise SpoolError(f"cannot use the MQTT spool folder {folder}: {exc.strerror or exc}") from None


def _check_owned(path: Path, info: os.stat_result, directory: bool) -> None:
    """Refuse a link, another user's file, or a folder others can write in (they could plant a link there)."""
    kind = stat.S_ISDIR if directory else stat.S_ISREG
    if stat.S_ISLNK(info.st_mode) or not kind(info.st_mode):
        raise SpoolError(f"--mqtt-spool: {path} is a symbolic link or not a {'folder' if directory else 'file'}: "
                         "give the spool a folder of its own")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise SpoolError(f"--mqtt-spool: {path} belongs to another user (uid {info.st_uid}): give the spool a "
                         "folder of its own")
    if directory and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SpoolError(f"--mqtt-spool: other users can write in {path}: chmod go-w it, or give the spool a folder "
                         "of its own")
