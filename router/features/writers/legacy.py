"""The old layout's per-writer queues (``DATA_DIR/writers/<name>/``), read until empty.

Before the shared queue (``queue.py``) each writer had its own LMDB queue. A node started
on such a data directory must still deliver what they hold, and to that writer only (the
records were already copied once per writer): so its runner reads its old queue first,
confirming there, and when nothing is left deletes the directory and goes on with the
shared queue, whose positions all lie above the old queue's (``SharedQueue``'s
``origin_above``), so a backend that stores its position (PostgreSQL) sees them increase.
The old queue of a writer that is no longer configured is left on disk untouched
(docs/writers.md says how to remove it).
"""

from __future__ import annotations

import logging
import shutil
import struct
from pathlib import Path

import lmdb

from router.features.writers.base import WriterBackendError
from router.features.writers.queue import (QueueStats, SharedQueue, WriterQueue, open_checked,
                                           read_records, shared_queue_path)

__all__ = ["DrainingQueue", "LegacyQueue", "legacy_heads", "legacy_queue_path",
           "open_shared_queue"]

log = logging.getLogger("router.writers")

_KEY = struct.Struct(">Q")
_TS = struct.Struct("<d")
MiB = 1 << 20


def legacy_queue_path(data_dir: str, writer: str) -> Path:
    """``DATA_DIR/writers/<name>/``: where the old layout kept a writer's queue."""
    return Path(data_dir) / "writers" / writer


def _legacy_recovery(path: Path) -> str:
    return (f"move it aside (mv {path} {path}.broken) and restart the node: the writer "
            "then reads the shared queue only")


def _map_size(max_bytes: int) -> int:
    return 3 * max_bytes + 64 * MiB            # what the old layout opened them with


def legacy_heads(data_dir: str) -> int:
    """The highest position any old per-writer queue under ``data_dir`` assigned (0 if
    none): the shared queue's positions must start above it."""
    top = 0
    root = Path(data_dir) / "writers"
    if not root.is_dir():
        return 0
    for path in sorted(root.iterdir()):
        if not (path / "data.mdb").is_file():
            continue
        try:
            env = open_checked(path, "old writer queue", _legacy_recovery(path), subdir=True,
                               max_dbs=2, readonly=True, lock=False)
            try:
                meta = env.open_db(b"meta", create=False)
                with env.begin() as txn:
                    raw = txn.get(b"head", db=meta)
                top = max(top, _KEY.unpack(raw)[0] if raw is not None else 0)
            finally:
                env.close()
        except (lmdb.Error, WriterBackendError) as e:
            log.warning("writers: old queue %s unreadable (%s); its head is ignored", path, e)
    return top


def open_shared_queue(data_dir: str, max_bytes: int) -> SharedQueue:
    """The node's shared queue; when it is created, its positions start above the old
    per-writer queues' heads too (a PostgreSQL writer may have stored one of those)."""
    path = shared_queue_path(data_dir)
    above = 0 if (path / "data.mdb").is_file() else legacy_heads(data_dir)
    return SharedQueue(path, max_bytes, origin_above=above)


class LegacyQueue:
    """One writer's old queue: read, confirm and age eviction only (nothing is appended)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        try:
            self._env = open_checked(path, "old writer queue", _legacy_recovery(path),
                                     subdir=True, max_dbs=2, map_size=_map_size(max_bytes),
                                     readahead=False, sync=True, metasync=True,
                                     max_readers=32)
            self._records = self._env.open_db(b"records")
            self._meta = self._env.open_db(b"meta")
        except lmdb.Error as e:
            raise WriterBackendError("queue", f"old writer queue {path}: {e}") from e

    @classmethod
    def open_if_present(cls, data_dir: str, writer: str, max_bytes: int
                        ) -> LegacyQueue | None:
        path = legacy_queue_path(data_dir, writer)
        return cls(path, max_bytes) if (path / "data.mdb").is_file() else None

    def close(self) -> None:
        self._env.close()

    def remove(self) -> None:
        """Close and delete the directory (drained), and ``writers/`` once empty."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass                                # other writers' old queues remain

    def _get(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        return int(_KEY.unpack(raw)[0]) if raw is not None else 0

    def _put(self, txn: lmdb.Transaction, key: bytes, value: int) -> None:
        txn.put(key, _KEY.pack(max(0, value)), db=self._meta)

    def head(self) -> int:
        with self._env.begin() as txn:
            return self._get(txn, b"head")

    def read(self, after: int, limit: int) -> list[tuple[int, float, bytes]]:
        with self._env.begin(buffers=False) as txn:
            return read_records(txn, self._records,
                                max(after, self._get(txn, b"position")) + 1, limit)

    def _drop(self, txn: lmdb.Transaction, upto: int | None, before: float | None
              ) -> tuple[int, int, int]:
        """Delete the oldest records, through position ``upto`` or appended before
        ``before``: (records, bytes, last position deleted)."""
        n = size = last = 0
        cursor = txn.cursor(db=self._records)
        if not cursor.first():
            return 0, 0, 0
        while cursor.key():
            position = _KEY.unpack(cursor.key())[0]
            value = cursor.value()
            if upto is not None and position > upto:
                break
            if before is not None and _TS.unpack_from(value)[0] >= before:
                break
            size += len(value)
            n += 1
            last = position
            if not cursor.delete():
                break
        return n, size, last

    def confirm(self, upto: int) -> int:
        """As ``SharedQueue.confirm``: returns the position before."""
        with self._env.begin(write=True) as txn:
            since = self._get(txn, b"position")
            upto = min(upto, self._get(txn, b"head"))
            if upto <= since:
                return since
            _, size, _ = self._drop(txn, upto, None)
            self._put(txn, b"position", upto)
            self._put(txn, b"bytes", self._get(txn, b"bytes") - size)
            return since

    def evict_older(self, cutoff: float) -> int:
        with self._env.begin(write=True) as txn:
            n, size, last = self._drop(txn, None, cutoff)
            if n:
                self._put(txn, b"position", max(self._get(txn, b"position"), last))
                self._put(txn, b"bytes", self._get(txn, b"bytes") - size)
                self._put(txn, b"evicted", self._get(txn, b"evicted") + n)
            return n

    def stats(self) -> QueueStats:
        with self._env.begin() as txn:
            head, position = self._get(txn, b"head"), self._get(txn, b"position")
            cursor = txn.cursor(db=self._records)
            oldest = _TS.unpack_from(cursor.value())[0] if cursor.first() else None
            return QueueStats(head, position, self._get(txn, b"bytes"),
                              self._get(txn, b"evicted"), oldest)


class DrainingQueue:
    """A writer's queue while its old queue still holds records: the old one first, then
    the shared one (``WriterQueue``'s interface). Once the old one is read and confirmed
    to its head, its directory is deleted."""

    def __init__(self, old: LegacyQueue, new: WriterQueue) -> None:
        self.old: LegacyQueue | None = old
        self.new = new
        self._old_head = old.head()

    def _check_drained(self) -> None:
        old = self.old
        if old is not None and old.stats().position >= self._old_head:
            self.old = None
            old.remove()
            log.info("writer %s: old queue %s drained and removed", self.new.name, old.path)

    def read(self, after: int, limit: int) -> list[tuple[int, float, bytes]]:
        self._check_drained()
        if self.old is not None:
            return self.old.read(after, limit)
        return self.new.read(after, limit)

    def confirm(self, upto: int) -> int:
        """The position before in the queue the batch came from (``read`` reads the old
        queue alone until it is drained, so a batch never spans both)."""
        since = 0
        if self.old is not None:
            since = self.old.confirm(min(upto, self._old_head))
            self._check_drained()
        if upto > self._old_head:
            since = self.new.confirm(upto)
        return since

    def evict_older(self, cutoff: float) -> int:
        n = self.old.evict_older(cutoff) if self.old is not None else 0
        return n + self.new.evict_older(cutoff)

    def stats(self) -> QueueStats:
        new = self.new.stats()
        if self.old is None:
            return new
        old = self.old.stats()
        oldest = old.oldest_appended_at if old.oldest_appended_at is not None \
            else new.oldest_appended_at
        # Backlog = old records left + the shared queue's: position counts the old
        # queue's remainder below the shared queue's position.
        return QueueStats(new.head, new.position - old.backlog, old.bytes + new.bytes,
                          old.evicted + new.evicted, oldest)

    def close(self) -> None:
        if self.old is not None:
            self.old.close()
