"""The durable result queue every writer of a node reads: one LMDB environment under
``DATA_DIR/writers-queue/``, shared by the node (appends) and the writers' process (reads).

Why one queue and not one per writer: the node appends each check result once, in one
write transaction (one fsync) per group commit, whatever the number of writers; each
writer only keeps its own read position. With a queue per writer the node paid a
transaction and an fsync per writer per round (issue 19, perf/bench_writers.py).

Why its own small store and not ``replaylog``: the replay log is keyed by endpoint and
message timestamp and pruned by peers' confirmations; the writers need one FIFO with a
position per reader. LMDB gives both processes crash-safe transactions on the same files
(its lock file serialises the write transactions of the two processes).

Layout (three named databases):

* ``records``: key = position (8-byte big-endian, increasing from the queue's creation
  time in microseconds, so a re-created queue never reuses positions a backend may have
  stored, PostgreSQL's ``writer_position``), value = ``appended_at`` (8-byte float, Unix
  time) + the ``event::CheckResult`` message as received (JSON bytes).
* ``meta``: ``head`` (last position assigned), ``bytes`` (sum of the value sizes held).
* ``readers``: per writer name, its ``position`` (every record up to it is delivered to
  that writer or evicted for it), its ``bytes`` (sizes of the records after its position:
  its backlog) and ``evicted`` (records thrown away for it by the bounds).

A writer that is registered starts at the head: a writer added by a reload does not
replay what came before it. A writer that is removed loses its position. Records are
deleted once every registered writer's position is past them, so the queue holds what
the slowest writer has not confirmed, at most the largest ``max_backlog_bytes``.

Who writes what: the node appends (``append_encoded``, then moves the position of each
writer whose backlog is above its ``max_backlog_bytes`` past its oldest records, counted
as evicted for that writer only); the writers' process confirms what a backend took
(``confirm``) and evicts what is older than ``max_age`` (``evict_older``). A position
only ever grows, so an eviction racing a confirmation loses nothing and delivers nothing
twice.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import lmdb

from replaylog.lmdbfile import CORRUPTION, aside_name, describe, problem_before_open
from replaylog.lmdbfile import open_checked as lmdbfile_open_checked
from router.features.writers.base import WriterBackendError
from router.transport.connector import Backoff

__all__ = ["QueueReader", "QueueStats", "SharedQueue", "WriterQueue", "encode_record",
           "open_checked", "read_records", "REOPEN", "reset_shared_queue",
           "shared_queue_path"]

_KEY = struct.Struct(">Q")
_TS = struct.Struct("<d")
F = TypeVar("F", bound=Callable[..., Any])


def _queue_errors(method: F) -> F:
    """An ``lmdb.Error`` (disk full or gone, a corrupt page) becomes a
    ``WriterBackendError("queue")``: the runner counts it, logs it and retries after a
    backoff, instead of the writer's task ending on it."""
    @functools.wraps(method)
    def wrapper(self: SharedQueue, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except lmdb.Error as e:
            raise WriterBackendError("queue", f"writer queue {self.path}: {e}") from e
    return wrapper  # type: ignore[return-value]


def read_records(txn: lmdb.Transaction, records: lmdb._Database, start: int, limit: int
                 ) -> list[tuple[int, float, bytes]]:
    """Up to ``limit`` records from position ``start`` on, as (position, appended_at,
    message bytes): the layout of ``records`` here and in the old per-writer queues."""
    out: list[tuple[int, float, bytes]] = []
    cursor = txn.cursor(db=records)
    if not cursor.set_range(_KEY.pack(start)):
        return out
    for key, value in cursor:
        out.append((_KEY.unpack(key)[0], _TS.unpack_from(value)[0], bytes(value[_TS.size:])))
        if len(out) >= limit:
            break
    return out
_READER = struct.Struct(">QQQ")          # position, backlog bytes, evicted
MiB = 1 << 20
GiB = 1 << 30
#: Past this share of the map in use, an append makes room at once (``_emergency_evict``)
#: while a deleting transaction can still commit.
TIGHT_FRACTION = 0.75
#: The map is address space, not disk (LMDB grows the file as it fills): generous, so
#: that a reload raising a writer's bound does not need both processes to resize it.
MIN_MAP_SIZE = 4 * GiB


def encode_record(appended_at: float, raw: bytes) -> bytes:
    """A stored value: ``appended_at`` (8-byte float) + the message's JSON."""
    return _TS.pack(appended_at) + raw


def shared_queue_path(data_dir: str) -> Path:
    """``DATA_DIR/writers-queue/`` (beside the old per-writer ``DATA_DIR/writers/<name>/``
    queues, so no writer name can collide with it)."""
    return Path(data_dir) / "writers-queue"


#: A queue that could not be opened (a full or read-only disk at start, a damaged file
#: moved aside with ``router writers reset``) is tried again by the node's feed and by
#: the writers' process after ``REOPEN.cap(attempts)``: 1 s doubling to 60 s.
REOPEN = Backoff(1.0, 60.0)


def reset_command(data_dir: str | os.PathLike[str]) -> str:
    return f"router writers reset --data-dir {data_dir}"


def open_checked(path: Path, what: str, recovery: str, **options: Any) -> lmdb.Environment:
    """``lmdb.open(path, **options)`` with the file checks of ``replaylog.lmdbfile``: a
    damaged or truncated ``data.mdb`` is a ``WriterBackendError("queue_corrupt")`` that
    names it and the ``recovery``, not a SIGBUS at the first read of a missing page (a
    truncated queue used to kill the node at every start). Other errors pass through."""
    data = path / "data.mdb"
    try:
        problem = problem_before_open(data)
        if problem is None:
            env, problem = lmdbfile_open_checked(path, lambda: lmdb.open(str(path), **options))
            if env is not None:
                return env
    except CORRUPTION as e:
        problem = describe(e)
    raise WriterBackendError("queue_corrupt", f"{what} {data} is corrupt or truncated "
                             f"({problem}); {recovery}")


def reset_shared_queue(data_dir: str | os.PathLike[str]) -> Path | None:
    """Move the node's writer queue aside (``writers-queue.broken-<unix time>``, kept:
    it may hold results no backend has yet); the node starts an empty one. Refuses while
    a process has it open. Where it went, or None when there was none."""
    path = shared_queue_path(str(data_dir))
    if not path.exists():
        return None
    lock = path / "lock.mdb"
    if lock.exists():
        # Every process with the environment open holds an fcntl lock on the first byte
        # of LMDB's lock file: an exclusive one of ours fails while any does.
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise WriterBackendError("queue_busy", f"writer queue {path} is in use: "
                                         "stop the node first") from e
            raise
        finally:
            os.close(fd)
    moved = aside_name(path)
    path.rename(moved)
    return moved


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One writer's view: the queue's head, its position, the bytes and records between."""

    head: int
    position: int
    bytes: int
    evicted: int
    oldest_appended_at: float | None

    @property
    def backlog(self) -> int:
        return self.head - self.position


class QueueReader(Protocol):
    """What a ``WriterRunner`` needs of its queue (``WriterQueue``, or
    ``legacy.DrainingQueue`` while an old per-writer queue is emptied first)."""

    def read(self, after: int, limit: int) -> list[tuple[int, float, bytes]]: ...

    def confirm(self, upto: int) -> int: ...

    def evict_older(self, cutoff: float) -> int: ...

    def stats(self) -> QueueStats: ...


@dataclass(slots=True)
class _Reader:
    position: int
    backlog_bytes: int
    evicted: int

    def pack(self) -> bytes:
        return _READER.pack(max(0, self.position), max(0, self.backlog_bytes), self.evicted)


class SharedQueue:
    """The node's writer queue; each process opens it once (LMDB forbids opening an
    environment twice in one process). Methods are blocking: call them from a thread."""

    def __init__(self, path: Path | str, max_bytes: int = 256 * MiB, *,
                 origin_above: int = 0) -> None:
        """``max_bytes``: the largest writer bound (sizes the map); ``origin_above``: a
        position the new queue's positions must lie above (the heads of old per-writer
        queues, ``legacy.py``), besides the clock."""
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._env = open_checked(
                self.path, "writer queue", "the writers cannot start; move it aside and "
                f"start an empty queue with: {reset_command(self.path.parent)}",
                subdir=True, max_dbs=3, map_size=max(MIN_MAP_SIZE, 3 * max_bytes + 64 * MiB),
                readahead=False, sync=True, metasync=True, max_readers=64)
            # Reader slots of processes killed inside a read transaction (the writers'
            # process, kill -9 or OOM) pin the pages freed after it for as long as any
            # process keeps the environment open: the file then grows with every append
            # until the map is full and every append fails (replaylog.env does the same).
            self._env.reader_check()
            self._records = self._env.open_db(b"records")
            self._meta = self._env.open_db(b"meta")
            self._readers = self._env.open_db(b"readers")
            with self._env.begin(write=True) as txn:
                if txn.get(b"head", db=self._meta) is None:
                    # A new queue starts at the clock in microseconds, not at 0: a
                    # backend that stores its position (PostgreSQL) may hold one from
                    # an earlier queue (a wiped data directory, or the old per-writer
                    # queue), and positions of the new queue must all lie above it, or
                    # the runner would take the new records as written already.
                    self._put(txn, b"head", max(time.time_ns() // 1000, origin_above + 1))
        except (OSError, lmdb.Error) as e:
            raise WriterBackendError("queue", f"writer queue {self.path}: {e}") from e

    @property
    def max_bound(self) -> int:
        """The largest per-writer byte bound this queue's map can enforce: appends and
        evictions need room beyond the records held (LMDB copies the pages it changes),
        which is why the map is three bounds and 64 MiB."""
        return max(MiB, (self._env.info()["map_size"] - 64 * MiB) // 3)

    def close(self) -> None:
        self._env.close()

    def reader(self, name: str) -> WriterQueue:
        """One writer's handle (registered at the head if it has no position yet)."""
        self.register(name)
        return WriterQueue(self, name)

    # -- helpers ---------------------------------------------------------------------

    def _get(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        return int(_KEY.unpack(raw)[0]) if raw is not None else 0

    def _put(self, txn: lmdb.Transaction, key: bytes, value: int) -> None:
        txn.put(key, _KEY.pack(max(0, value)), db=self._meta)

    def _all_readers(self, txn: lmdb.Transaction) -> dict[str, _Reader]:
        return {bytes(k).decode(): _Reader(*_READER.unpack(v))
                for k, v in txn.cursor(db=self._readers)}

    def _reader(self, txn: lmdb.Transaction, name: str) -> _Reader | None:
        raw = txn.get(name.encode(), db=self._readers)
        return _Reader(*_READER.unpack(raw)) if raw is not None else None

    def _store(self, txn: lmdb.Transaction, name: str, reader: _Reader) -> None:
        txn.put(name.encode(), reader.pack(), db=self._readers)

    def _advance(self, txn: lmdb.Transaction, reader: _Reader, *, upto: int | None = None,
                 max_bytes: int | None = None, older_than: float | None = None) -> int:
        """Move ``reader`` past its oldest records: through ``upto``, while its backlog is
        above ``max_bytes``, or while they were appended before ``older_than``. Returns
        how many records it passed; its ``backlog_bytes`` drop by their sizes."""
        cursor = txn.cursor(db=self._records)
        if not cursor.set_range(_KEY.pack(reader.position + 1)):
            return 0
        n = 0
        for key, value in cursor:
            position = _KEY.unpack(key)[0]
            if upto is not None and position > upto:
                break
            if max_bytes is not None and reader.backlog_bytes <= max_bytes:
                break
            if older_than is not None and _TS.unpack_from(value)[0] >= older_than:
                break
            reader.position = position
            reader.backlog_bytes -= len(value)
            n += 1
        return n

    def _prune(self, txn: lmdb.Transaction) -> None:
        """Delete the records every writer is past (all of them when none is left)."""
        readers = self._all_readers(txn)
        upto = min((r.position for r in readers.values()), default=self._get(txn, b"head"))
        cursor = txn.cursor(db=self._records)
        if not cursor.first():
            return
        size = 0
        while True:
            key = cursor.key()
            if not key or _KEY.unpack(key)[0] > upto:
                break
            size += len(cursor.value())
            if not cursor.delete():
                break
        if size:
            self._put(txn, b"bytes", self._get(txn, b"bytes") - size)

    # -- the writers' set --------------------------------------------------------------

    @_queue_errors
    def register(self, name: str) -> bool:
        """Give ``name`` a position at the head unless it has one; True if it was new."""
        with self._env.begin(write=True) as txn:
            if self._reader(txn, name) is not None:
                return False
            self._store(txn, name, _Reader(self._get(txn, b"head"), 0, 0))
            return True

    @_queue_errors
    def retain(self, names: set[str] | frozenset[str]) -> list[str]:
        """Register ``names``; forget every other writer's position (removed from the
        configuration) so it no longer holds records back. The forgotten names."""
        with self._env.begin(write=True, buffers=True) as txn:
            head = self._get(txn, b"head")
            known = self._all_readers(txn)
            gone = sorted(set(known) - set(names))
            for name in gone:
                txn.delete(name.encode(), db=self._readers)
            for name in sorted(set(names) - set(known)):
                self._store(txn, name, _Reader(head, 0, 0))
            if gone:
                self._prune(txn)
            return gone

    def writers(self) -> list[str]:
        with self._env.begin() as txn:
            return sorted(self._all_readers(txn))

    # -- node side -------------------------------------------------------------------

    def append_encoded(self, values: list[bytes], max_bytes: Mapping[str, int]
                       ) -> tuple[int, dict[str, int]]:
        """Append values (``encode_record``) once for every writer, in one transaction;
        then each writer whose backlog is above its bound in ``max_bytes`` passes its
        oldest records. (appended, {writer: evicted})."""
        try:
            with self._env.begin(write=True, buffers=True) as txn:
                head = self._get(txn, b"head")
                first = head + 1
                head += len(values)
                size = sum(map(len, values))
                items = list(zip(map(_KEY.pack, range(first, head + 1)), values))
                if items:
                    with txn.cursor(db=self._records) as cursor:
                        cursor.putmulti(items, append=True)
                self._put(txn, b"head", head)
                self._put(txn, b"bytes", self._get(txn, b"bytes") + size)
                evicted: dict[str, int] = {}
                # Writers over the same bound from the same position (the usual case
                # when the backends all fall behind) pass the same records: walk them
                # once, not once per writer.
                walked: dict[tuple[int, int, int], tuple[int, int, int]] = {}
                for name, reader in self._all_readers(txn).items():
                    reader.backlog_bytes += size
                    bound = max_bytes.get(name)
                    if bound is not None and reader.backlog_bytes > bound:
                        start = (reader.position, reader.backlog_bytes, bound)
                        done = walked.get(start)
                        if done is None:
                            n = self._advance(txn, reader, max_bytes=bound)
                            walked[start] = (reader.position, reader.backlog_bytes, n)
                        else:
                            reader.position, reader.backlog_bytes, n = done
                        reader.evicted += n
                        evicted[name] = n
                    self._store(txn, name, reader)
                if evicted:
                    self._prune(txn)
                tight = self._pages_used(txn) > TIGHT_FRACTION * self._env.info()["map_size"]
            if tight:
                # Made while there is room: a transaction that deletes needs new pages
                # too, so in a full map no eviction could commit, nor a restart's
                # retain, and the queue stayed full for good (review).
                for name, n in self._emergency_evict(max_bytes).items():
                    evicted[name] = evicted.get(name, 0) + n
            return len(items), evicted
        except lmdb.MapFullError as e:
            # The map is far above the bounds: a bound raised far beyond what the files
            # were opened with, or pages pinned by a dead reader. Make room for the next
            # group.
            try:
                self._env.reader_check()
                self._emergency_evict(max_bytes)
            except lmdb.Error as again:
                raise WriterBackendError("queue_full", f"writer queue {self.path} full, "
                                         f"and no room made: {again}") from e
            raise WriterBackendError("queue_full", f"writer queue {self.path} full: {e}") from e
        except lmdb.Error as e:
            raise WriterBackendError("queue", f"writer queue {self.path}: {e}") from e

    def append_many(self, records: list[tuple[float, bytes]],
                    max_bytes: Mapping[str, int]) -> tuple[int, dict[str, int]]:
        """``append_encoded`` of (``appended_at``, JSON) pairs."""
        return self.append_encoded([encode_record(t, raw) for t, raw in records], max_bytes)

    def _emergency_evict(self, max_bytes: Mapping[str, int]) -> dict[str, int]:
        """Each writer passes its oldest records down to half of what it holds or of
        its bound, whichever is less: a bound above what the map can hold (raised by a
        reload) must not leave the queue full for good. {writer: evicted}."""
        evicted: dict[str, int] = {}
        with self._env.begin(write=True, buffers=True) as txn:
            for name, reader in self._all_readers(txn).items():
                half = min(max_bytes.get(name, reader.backlog_bytes),
                           reader.backlog_bytes) // 2
                n = self._advance(txn, reader, max_bytes=half)
                reader.evicted += n
                if n:
                    evicted[name] = n
                self._store(txn, name, reader)
            self._prune(txn)
        return evicted

    def _pages_used(self, txn: lmdb.Transaction) -> int:
        """Bytes of the pages the databases use (the free list aside)."""
        used = 0
        for db in (None, self._records, self._meta, self._readers):
            st = txn.stat(db) if db is not None else self._env.stat()
            used += (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
        return used

    # -- writer side -----------------------------------------------------------------

    @_queue_errors
    def read(self, name: str, after: int, limit: int) -> list[tuple[int, float, bytes]]:
        """Up to ``limit`` records with positions > max(after, the writer's position)."""
        with self._env.begin(buffers=False) as txn:
            reader = self._reader(txn, name)
            if reader is None:
                return []
            return read_records(txn, self._records, max(after, reader.position) + 1, limit)

    @_queue_errors
    def confirm(self, name: str, upto: int) -> int:
        """Everything up to ``upto`` reached ``name``'s backend: move its position, and
        delete what no writer needs any more. A writer without a position (removed
        meanwhile) is left alone.

        Returns the writer's position before: records at or below it were evicted for it
        while its batch was on the way (the node's byte bound), and are counted as
        evicted, so the runner must not count them as written too."""
        with self._env.begin(write=True, buffers=True) as txn:
            reader = self._reader(txn, name)
            if reader is None:
                return 0
            since = reader.position
            upto = min(upto, self._get(txn, b"head"))
            if upto <= since:
                return since
            self._advance(txn, reader, upto=upto)
            reader.position = upto
            self._store(txn, name, reader)
            self._prune(txn)
            return since

    @_queue_errors
    def evict_older(self, name: str, cutoff: float) -> int:
        """Pass ``name``'s records appended before ``cutoff`` (``max_backlog_age``);
        how many."""
        with self._env.begin(write=True, buffers=True) as txn:
            reader = self._reader(txn, name)
            if reader is None:
                return 0
            n = self._advance(txn, reader, older_than=cutoff)
            if n:
                reader.evicted += n
                self._store(txn, name, reader)
                self._prune(txn)
            return n

    @_queue_errors
    def stats(self, name: str) -> QueueStats:
        with self._env.begin() as txn:
            head = self._get(txn, b"head")
            reader = self._reader(txn, name) or _Reader(head, 0, 0)
            cursor = txn.cursor(db=self._records)
            oldest = None
            if reader.position < head and cursor.set_range(_KEY.pack(reader.position + 1)):
                oldest = _TS.unpack_from(cursor.value())[0]
        return QueueStats(head, reader.position, reader.backlog_bytes, reader.evicted, oldest)

    def held(self) -> tuple[int, int]:
        """(records, bytes) the queue holds for all writers together."""
        with self._env.begin() as txn:
            return int(txn.stat(self._records)["entries"]), self._get(txn, b"bytes")


class WriterQueue:
    """One writer's handle on the shared queue: what a ``WriterRunner`` reads and confirms."""

    def __init__(self, queue: SharedQueue, name: str) -> None:
        self.queue = queue
        self.name = name

    def read(self, after: int, limit: int) -> list[tuple[int, float, bytes]]:
        return self.queue.read(self.name, after, limit)

    def confirm(self, upto: int) -> int:
        return self.queue.confirm(self.name, upto)

    def evict_older(self, cutoff: float) -> int:
        return self.queue.evict_older(self.name, cutoff)

    def stats(self) -> QueueStats:
        return self.queue.stats(self.name)
