"""The durable result queue of one writer: an LMDB environment under
``DATA_DIR/writers/<name>/``, shared by two processes.

Why its own small store and not ``replaylog``: the replay log is keyed by endpoint and
message timestamp and pruned by peers' confirmations; a writer needs one FIFO with one
reader position, written by the node and read by the writers' process. LMDB gives both
processes crash-safe transactions on the same files (its lock file serialises the write
transactions of the two processes).

Layout (two named databases):

* ``records``: key = position (8-byte big-endian, increasing from the queue's creation
  time in microseconds, so a re-created queue never reuses an old queue's positions), value =
  ``appended_at`` (8-byte float, Unix time) + the ``event::CheckResult`` message as
  received (JSON bytes).
* ``meta``: ``head`` (last position assigned), ``position`` (every record up to it is
  delivered or evicted), ``bytes`` (sum of the value sizes held), ``evicted`` (records
  thrown away by the bounds since the queue was created).

Who writes what: the node appends (``append_many``, one transaction per group commit,
then evicts the oldest records beyond ``max_bytes``); the writers' process deletes what
its backend confirmed (``confirm``) and evicts records older than ``max_age``
(``evict_older``). ``position`` only ever grows (``max`` of both sides), so an eviction
racing a confirmation loses nothing and delivers nothing twice.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lmdb

from router.features.writers.base import WriterBackendError

__all__ = ["QueueStats", "ResultQueue", "encode_record", "queue_path"]

_KEY = struct.Struct(">Q")
_TS = struct.Struct("<d")
_META_KEYS = (b"head", b"position", b"bytes", b"evicted")
MiB = 1 << 20


def encode_record(appended_at: float, raw: bytes) -> bytes:
    """A stored value: ``appended_at`` (8-byte float) + the message's JSON."""
    return _TS.pack(appended_at) + raw


def queue_path(data_dir: str, writer: str) -> Path:
    """``DATA_DIR/writers/<name>/``."""
    return Path(data_dir) / "writers" / writer


@dataclass(frozen=True, slots=True)
class QueueStats:
    head: int
    position: int
    bytes: int
    evicted: int
    oldest_appended_at: float | None

    @property
    def backlog(self) -> int:
        return self.head - self.position


class ResultQueue:
    """One writer's queue; each process opens it once (LMDB forbids opening an
    environment twice in one process). Methods are blocking: call them from a thread."""

    def __init__(self, path: Path | str, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
            # A fixed map: growing it would need both processes to agree. Three times
            # the bound leaves room for LMDB's page overhead and free pages.
            self._env = lmdb.open(str(self.path), subdir=True, max_dbs=2,
                                  map_size=3 * max_bytes + 64 * MiB, readahead=False,
                                  sync=True, metasync=True, max_readers=32)
            self._records = self._env.open_db(b"records")
            self._meta = self._env.open_db(b"meta")
            with self._env.begin(write=True) as txn:
                if txn.get(b"head", db=self._meta) is None:
                    # A new queue starts at the clock in microseconds, not at 0: a
                    # backend that stores its position (PostgreSQL) may hold one from
                    # an earlier queue of this writer (a wiped data directory), and
                    # positions of the new queue must all lie above it, or the runner
                    # would take the new records as written already.
                    origin = time.time_ns() // 1000
                    self._put(txn, b"head", origin)
                    self._put(txn, b"position", origin)
        except (OSError, lmdb.Error) as e:
            raise WriterBackendError("queue", f"writer queue {self.path}: {e}") from e

    def close(self) -> None:
        self._env.close()

    # -- helpers ---------------------------------------------------------------------

    def _get(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        return int(_KEY.unpack(raw)[0]) if raw is not None else 0

    def _put(self, txn: lmdb.Transaction, key: bytes, value: int) -> None:
        txn.put(key, _KEY.pack(max(0, value)), db=self._meta)

    def _drop_through(self, txn: lmdb.Transaction, upto: int) -> tuple[int, int]:
        """Delete records with positions <= upto: (records, bytes) removed."""
        n = size = 0
        cursor = txn.cursor(db=self._records)
        if not cursor.first():
            return 0, 0
        while True:
            key = cursor.key()
            if _KEY.unpack(key)[0] > upto:
                break
            size += len(cursor.value())
            n += 1
            if not cursor.delete() or not cursor.key():   # moved to the next, or none left
                break
        return n, size

    # -- node side -------------------------------------------------------------------

    def append_many(self, records: Iterable[tuple[float, bytes]]) -> tuple[int, int]:
        """Append records (``appended_at``, JSON) in one transaction, then evict the
        oldest beyond ``max_bytes``; (appended, evicted)."""
        return self.append_encoded([encode_record(t, raw) for t, raw in records])

    def append_encoded(self, values: list[bytes]) -> tuple[int, int]:
        """``append_many`` with the values already encoded (``encode_record``): the feed
        encodes each result once for all writers."""
        try:
            with self._env.begin(write=True) as txn:
                head = self._get(txn, b"head")
                first = head + 1
                head += len(values)
                total = self._get(txn, b"bytes") + sum(map(len, values))
                items = list(zip(map(_KEY.pack, range(first, head + 1)), values))
                added = len(items)
                if items:
                    with txn.cursor(db=self._records) as cursor:
                        cursor.putmulti(items, append=True)
                self._put(txn, b"head", head)
                evicted = 0
                if total > self.max_bytes:
                    evicted, total = self._evict_bytes(txn, total)
                self._put(txn, b"bytes", total)
                return added, evicted
        except lmdb.MapFullError as e:
            # The bound is far below the map: only a much smaller max_bytes than the
            # files were made with gets here. Make room for the next group.
            self._emergency_evict()
            raise WriterBackendError("queue_full", f"writer queue {self.path} full: {e}") from e
        except lmdb.Error as e:
            raise WriterBackendError("queue", f"writer queue {self.path}: {e}") from e

    def _evict_bytes(self, txn: lmdb.Transaction, total: int) -> tuple[int, int]:
        position = self._get(txn, b"position")
        evicted = 0
        cursor = txn.cursor(db=self._records)
        cursor.first()
        last = position
        while total > self.max_bytes and cursor.key():
            last = _KEY.unpack(cursor.key())[0]
            total -= len(cursor.value())
            evicted += 1
            if not cursor.delete() or not cursor.key():
                break
        self._put(txn, b"position", max(position, last))
        self._put(txn, b"evicted", self._get(txn, b"evicted") + evicted)
        return evicted, total

    def _emergency_evict(self) -> None:
        with self._env.begin(write=True) as txn:
            total = self._get(txn, b"bytes")
            half = self.max_bytes // 2
            old, self.max_bytes = self.max_bytes, half
            try:
                _, total = self._evict_bytes(txn, total)
            finally:
                self.max_bytes = old
            self._put(txn, b"bytes", total)

    # -- writer side -----------------------------------------------------------------

    def read(self, after: int, limit: int) -> list[tuple[int, float, bytes]]:
        """Up to ``limit`` records with positions > max(after, stored position)."""
        out: list[tuple[int, float, bytes]] = []
        with self._env.begin(buffers=False) as txn:
            start = max(after, self._get(txn, b"position")) + 1
            cursor = txn.cursor(db=self._records)
            if not cursor.set_range(_KEY.pack(start)):
                return out
            for key, value in cursor:
                out.append((_KEY.unpack(key)[0], _TS.unpack_from(value)[0],
                            bytes(value[_TS.size:])))
                if len(out) >= limit:
                    break
        return out

    def confirm(self, upto: int) -> None:
        """Everything up to ``upto`` reached the backend: forget it."""
        with self._env.begin(write=True) as txn:
            position = self._get(txn, b"position")
            upto = min(upto, self._get(txn, b"head"))
            if upto <= position:
                return
            _, size = self._drop_through(txn, upto)
            self._put(txn, b"position", upto)
            self._put(txn, b"bytes", self._get(txn, b"bytes") - size)

    def evict_older(self, cutoff: float) -> int:
        """Evict records appended before ``cutoff`` (``max_backlog_age``); how many."""
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._records)
            n = size = 0
            last = 0
            if cursor.first():
                while True:
                    value = cursor.value()
                    if _TS.unpack_from(value)[0] >= cutoff:
                        break
                    last = _KEY.unpack(cursor.key())[0]
                    size += len(value)
                    n += 1
                    if not cursor.delete() or not cursor.key():
                        break
            if n:
                self._put(txn, b"position", max(self._get(txn, b"position"), last))
                self._put(txn, b"bytes", self._get(txn, b"bytes") - size)
                self._put(txn, b"evicted", self._get(txn, b"evicted") + n)
            return n

    def stats(self) -> QueueStats:
        with self._env.begin() as txn:
            values = {k: self._get(txn, k) for k in _META_KEYS}
            cursor = txn.cursor(db=self._records)
            oldest = _TS.unpack_from(cursor.value())[0] if cursor.first() else None
        return QueueStats(values[b"head"], values[b"position"], values[b"bytes"],
                          values[b"evicted"], oldest)
