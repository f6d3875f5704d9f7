"""The replay log's synchronous LMDB store.

Theory of operation
-------------------
The node routes a message that Icinga would log (``RouteDecision.logged``) to a target
zone whose endpoints are all disconnected. That message goes here, filed under the
*target zone*, as the frame bytes the node would have sent, with the ``ts`` stamped into
it and the zone of the object it is about (for the access check at replay). When an
endpoint of that zone connects again, the node replays the zone's records with
``ts`` greater than the endpoint's confirmed position (Icinga's ``local_log_position``),
in order, and the endpoint confirms how far it got with ``log::SetLogPosition``.

The layout is in ``replaylog.keys``: one ``records`` sub-database keyed by
``(zone id, seq)`` big-endian, so a zone's records are contiguous and only grow at the
end. Appends use ``putmulti(append=True)`` whenever the batch's keys sort after the
last key of the database (always true for the highest zone id, which is the common
single-zone case); other zones use ordinary puts, which LMDB handles with page splits.
Deletion only ever happens at the *head* of a zone (prune, eviction), so the live
records of a zone are a contiguous seq range. Per-zone and total counters live in the
``meta`` sub-database and are updated in the same transaction as the records, so
``stats()`` and the byte cap never scan.

Retention (``prune``) follows Icinga's cleanup rule per endpoint: a record is kept while
some eligible endpoint of its zone still needs it, that is, has not confirmed it *and*
it is younger than that endpoint's ``log_duration``. An endpoint with ``log_duration``
0 is not eligible (no replay, no retention, as in Icinga); a negative duration keeps
records until they are confirmed. On top of that a byte cap (``max_bytes``) evicts the
oldest records across all zones; evictions are counted per zone and logged once per zone.

Threads and processes
---------------------
* Write methods (``append_many``, ``confirm``, ``prune``, ``enforce_cap``, ``close``) are
  serialised by a lock, so they are safe from any thread, but each is a blocking LMDB
  write transaction (with an fsync when ``sync=True``): never call them on the event
  loop. ``replaylog.writer.ReplayWriter`` owns the store in one thread and is what the
  node uses.
* Read methods (``read_batch``, ``iter_from``, ``position``, ``positions``, ``stats``)
  are safe from any thread, concurrently with the writer: each opens its own short read
  transaction (LMDB readers never block the writer, nor the writer them). ``iter_from``
  reads in chunks of ``READ_CHUNK`` records, each chunk in its own transaction, and
  yields only after that transaction has ended: a slow consumer never pins old pages
  (which would make the file grow) and never holds the map while it is being grown.
* The only thing readers must not overlap is a map resize, which remaps the file; a
  small shared/exclusive gate makes every read transaction wait for a resize in
  progress and a resize wait for the read transactions in progress.
* Open the store in the process that uses it. A store used after ``fork()`` raises
  ``InvalidState`` (LMDB environments must not cross a fork). One process at a time may
  open a log for writing: a second one gets ``ReplayLogBusy``.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

import lmdb


from . import keys as K
from .errors import (InvalidState, ReplayLogBusy, ReplayLogCorrupt, ReplayLogDiskFull,
                     ReplayLogError)

log = logging.getLogger("router.replaylog")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

DEFAULT_MAP_SIZE = 256 * MiB
DEFAULT_MAX_BYTES = 1 * GiB
#: Icinga's default ``log_duration`` for an endpoint (1 day).
DEFAULT_LOG_DURATION = 86400.0
#: A confirmed position more than this far ahead of the reference time is clamped.
FUTURE_SLACK = 86400.0
#: Records per read transaction in ``iter_from``.
READ_CHUNK = 1024
#: ... and at most this many frame bytes (a chunk always holds at least one record).
READ_CHUNK_BYTES = 4 * MiB
#: Name of the file whose ``flock`` marks the one process allowed to write.
LOCK_FILE = "writer.lock"

_T = TypeVar("_T")

#: LMDB errors that mean the files are damaged (as opposed to full, busy or misused).
_CORRUPTION = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError,
               lmdb.VersionMismatchError, lmdb.PanicError, lmdb.BadChecksumError,
               lmdb.IncompatibleError)


class Record(NamedTuple):
    """One stored message, as ``iter_from`` yields it."""

    seq: int                  #: position in its zone, strictly increasing
    ts: float                 #: the ``ts`` of the message (Icinga's log ``timestamp``)
    frame: bytes              #: the netstring frame, ready to send as is
    object_zone: str | None   #: zone of the object; None = any peer may receive it


@dataclass(frozen=True, slots=True)
class PruneStats:
    """What one ``prune`` deleted, per zone."""

    confirmed: dict[str, int] = field(default_factory=dict)  #: every eligible peer had it
    expired: dict[str, int] = field(default_factory=dict)    #: older than the retention
    disabled: dict[str, int] = field(default_factory=dict)   #: zone has no eligible peer
    bytes: int = 0                                           #: key + value bytes freed

    @property
    def total(self) -> int:
        return (sum(self.confirmed.values()) + sum(self.expired.values())
                + sum(self.disabled.values()))


@dataclass(slots=True)
class _Zone:
    """Counters of one target zone, mirrored in ``meta`` (``keys.ZONE_META``)."""

    id: int
    name: str
    records: int = 0
    bytes: int = 0
    last_seq: int = 0
    evicted: int = 0
    newest_ts: float = 0.0
    flags: int = 0

    def copy(self) -> _Zone:
        return _Zone(self.id, self.name, self.records, self.bytes, self.last_seq,
                     self.evicted, self.newest_ts, self.flags)

    def pack(self) -> bytes:
        return K.ZONE_META.pack(self.records, self.bytes, self.last_seq, self.evicted,
                                self.newest_ts, self.flags)

    def removed(self, count: int, nbytes: int) -> None:
        self.records -= count
        self.bytes -= nbytes
        if self.records <= 0:
            # An empty zone starts over: no disorder, no newest ts. last_seq stays.
            self.records = self.bytes = 0
            self.flags = 0
            self.newest_ts = 0.0


class _Gate:
    """Shared (read transactions) / exclusive (map resize, close), writer-preferring."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _Write:
    """The in-memory side of one write transaction.

    Zone counters are copied on first change and only published to the store once the
    transaction has committed, so an aborted transaction (map full, disk full) leaves the
    store's view exactly as the file is.
    """

    __slots__ = (
        "evicted",
        "names",
        "next_zone",
        "store",
        "total_bytes",
        "total_records",
        "txn",
        "zones",
    )

    def __init__(self, store: ReplayStore, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.zones: dict[int, _Zone] = {}
        self.names: dict[str, int] = {}
        self.total_records = store._total_records
        self.total_bytes = store._total_bytes
        self.next_zone = store._next_zone
        self.evicted: dict[str, int] = {}

    def zone_id(self, name: str) -> int:
        """The id of ``name``, allocated (in this transaction) when new."""
        zid = self.store._ids.get(name)
        if zid is None:
            zid = self.names.get(name)
            if zid is None:
                if self.next_zone > K.MAX_ZONE_ID:
                    raise ReplayLogError("replay log: zone id space exhausted")
                raw = K.encode_name(name)
                zid = self.next_zone
                self.next_zone += 1
                packed = K.ZONE_ID.pack(zid)
                self.txn.put(raw, packed, db=self.store._zones_db)
                self.txn.put(packed, raw, db=self.store._zone_names_db)
                self.names[name] = zid
        return zid

    def zone(self, zid: int, name: str) -> _Zone:
        """A mutable copy of zone ``zid``'s counters."""
        z = self.zones.get(zid)
        if z is None:
            base = self.store._zones.get(zid)
            z = base.copy() if base is not None else _Zone(zid, name)
            self.zones[zid] = z
        return z

    def live_zones(self) -> list[_Zone]:
        """Zones that hold records, as this transaction sees them (read-only views)."""
        out = [z for z in self.zones.values() if z.records]
        out.extend(z for zid, z in self.store._zones.items()
                   if z.records and zid not in self.zones)
        return out

    def finish(self) -> None:
        """Write the changed counters into ``meta`` (inside the transaction)."""
        store = self.store
        txn = self.txn
        for z in self.zones.values():
            txn.put(K.zone_meta_key(z.id), z.pack(), db=store._meta_db)
        if (self.total_records, self.total_bytes) != (store._total_records,
                                                       store._total_bytes):
            txn.put(K.META_TOTAL, K.TOTALS.pack(self.total_records, self.total_bytes),
                    db=store._meta_db)
        if self.next_zone != store._next_zone:
            txn.put(K.META_NEXT_ZONE, K.U32.pack(self.next_zone), db=store._meta_db)
        map_size = store._map_size
        if map_size != store._stored_map_size:
            txn.put(K.META_MAP_SIZE, K.U64.pack(map_size), db=store._meta_db)

    def publish(self) -> None:
        """After commit: make the new state the store's."""
        store = self.store
        for name, zid in self.names.items():
            store._names[zid] = name
            store._ids[name] = zid
        store._zones.update(self.zones)
        store._total_records = self.total_records
        store._total_bytes = self.total_bytes
        store._next_zone = self.next_zone
        store._stored_map_size = store._map_size
        for z in self.zones.values():
            store._newest_ts = max(store._newest_ts, z.newest_ts)
        for name, count in self.evicted.items():
            store._note_evicted(name, count)


class ReplayStore:
    """The replay log in one LMDB environment (a directory).

    Args:
        path: directory of the environment (created, mode 0750, when missing).
        map_size: initial LMDB map size. The map is virtual address space; the file only
            grows as pages are used. When a write hits ``MapFullError`` the map doubles,
            up to ``max_map_size``.
        max_bytes: cap on the stored key + value bytes of the whole log (1 GiB default);
            above it the oldest records across all zones are evicted.
        max_map_size: largest map the store grows to (default: ``4 * max_bytes``, at
            least ``map_size``). Past it, a full map evicts the oldest records.
        sync: ``True`` (default): every commit is fsynced, so a committed record survives
            a crash of the machine. ``False``: LMDB's ``MDB_NOSYNC | MDB_NOMETASYNC``,
            the OS writes the pages back when it likes; a committed record still survives
            ``kill -9`` of the process but an OS crash may lose recent commits (or, on
            file systems that reorder writes, damage the file). See the README.
        readonly: open for reading only (tools: stats, dumps); no lock is taken.

    Raises:
        ReplayLogCorrupt: the files are not a usable replay log (names the file and the
            recovery command).
        ReplayLogBusy: another process has the log open for writing.
        ReplayLogError: the directory cannot be used (permissions, ...).
    """

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_map_size: int | None = None,
                 sync: bool = True, readonly: bool = False) -> None:
        if map_size <= 0 or max_bytes < 0:
            raise ValueError("map_size must be > 0 and max_bytes >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_map_size = max(map_size, max_map_size if max_map_size is not None
                                else 4 * max_bytes)
        self.sync_commits = sync
        self.readonly = readonly
        self._pid = os.getpid()
        self._closed = False
        self._write_lock = threading.RLock()
        self._gate = _Gate()
        # Committed state, mirrored from the file (changed only by _Write.publish).
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._zones: dict[int, _Zone] = {}
        self._total_records = 0
        self._total_bytes = 0
        self._next_zone = 0
        self._stored_map_size = 0
        self._newest_ts = 0.0
        # Process-local counters (stats()).
        self._soft_cap: int | None = None   # lowered cap after a full map at its maximum
        self._emergency_used = False
        self.map_full = 0            # MapFullError seen on a write
        self.map_grown = 0           # ... resolved by growing the map
        self.dropped = 0             # records that fit in no map at all (bigger than it)
        self.disk_full = 0           # ENOSPC seen on a write
        self.clamped_positions = 0   # confirmed positions clamped from the future
        self._evicted_total = 0      # evicted by this process (the file keeps the totals)
        self._warned_evicted: set[str] = set()
        self._warned_clamped: set[str] = set()
        self._warned: set[str] = set()
        self._lock_fd: int | None = None
        self._env: lmdb.Environment | None = None

        if not readonly:
            self._create_dir()
            self._lock_fd = _acquire_lock(self.path)
        try:
            self._open_env(map_size)
            self._load()
            if self._pending_map_size:
                # A previous run grew the map: start there rather than hit MapFull again.
                self._resize(self._pending_map_size)
            self._pending_map_size = 0
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs) -> ReplayStore:
        """``ReplayStore.open(path, *, map_size, max_bytes, max_map_size, sync, readonly)``."""
        return cls(path, **kwargs)

    # -- opening ---------------------------------------------------------------------

    def _create_dir(self) -> None:
        try:
            self.path.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as e:
            raise ReplayLogError(f"replay log directory {self.path}: {e.strerror}") from e
        if not self.path.is_dir():
            raise ReplayLogError(f"replay log path {self.path} is not a directory")

    def _open_env(self, map_size: int) -> None:
        data = self.path / "data.mdb"
        if self.readonly and not data.exists():
            raise ReplayLogError(f"no replay log at {self.path}")
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            size = None
        except OSError as e:
            raise ReplayLogError(f"replay log {data}: {e.strerror}") from e
        # LMDB writes both meta pages when it creates the file; a shorter file was cut.
        if size is not None and size < 2 * 4096:
            raise ReplayLogCorrupt(self.path, f"the file is {size} bytes, shorter than "
                                   "LMDB's two meta pages")
        try:
            self._env = lmdb.open(
                str(self.path), map_size=map_size, subdir=True, readonly=self.readonly,
                sync=self.sync_commits, metasync=self.sync_commits, max_dbs=K.MAX_DBS,
                mode=0o640, create=not self.readonly, max_spare_txns=0, lock=True)
        except _CORRUPTION as e:
            raise ReplayLogCorrupt(self.path, _describe(e)) from e
        except lmdb.Error as e:
            raise ReplayLogError(f"cannot open replay log {self.path}: {_describe(e)}") from e
        env = self._env
        info = env.info()
        psize = env.stat()["psize"]
        needed = (info["last_pgno"] + 1) * psize
        actual = data.stat().st_size
        if actual < needed:
            raise ReplayLogCorrupt(self.path, f"the file is {actual} bytes but its pages "
                                   f"reach {needed}: it was truncated")
        self._psize = psize
        self._map_size = info["map_size"]
        if not self.readonly:
            stale = env.reader_check()  # reader slots of killed processes
            if stale:
                log.info("replay log %s: cleared %d stale reader slot(s)", self.path, stale)

    def _load(self) -> None:
        """Open the sub-databases and load zone ids and counters; verify what is cheap."""
        env = self._env
        assert env is not None
        def open_dbs(txn: lmdb.Transaction | None) -> None:
            # A read-only transaction closes the handles it opened when it ends, so the
            # read-only store opens them with py-lmdb's own (committed) transactions.
            create = not self.readonly
            try:
                self._records_db = env.open_db(K.RECORDS_DB, txn=txn, create=create)
                self._zones_db = env.open_db(K.ZONES_DB, txn=txn, create=create)
                self._zone_names_db = env.open_db(K.ZONE_NAMES_DB, txn=txn, create=create)
                self._positions_db = env.open_db(K.POSITIONS_DB, txn=txn, create=create)
                self._meta_db = env.open_db(K.META_DB, txn=txn, create=create)
            except lmdb.NotFoundError as e:
                raise ReplayLogError(f"{self.path} is not a replay log "
                                     "(sub-databases missing)") from e
        try:
            if self.readonly:
                open_dbs(None)
            with env.begin(write=not self.readonly) as txn:
                if not self.readonly:
                    open_dbs(txn)
                self._load_in(txn)
        except ReplayLogError:
            raise
        except (*_CORRUPTION, lmdb.BadValsizeError, ValueError, UnicodeError) as e:
            # struct.error is a ValueError: a meta entry or key of the wrong size.
            raise ReplayLogCorrupt(self.path, _describe(e)) from e
        except lmdb.Error as e:
            raise ReplayLogError(f"cannot open replay log {self.path}: {_describe(e)}") from e

    def _load_in(self, txn: lmdb.Transaction) -> None:
        meta = self._meta_db
        version = txn.get(K.META_VERSION, db=meta)
        has_records = txn.stat(self._records_db)["entries"] > 0
        if version is None:
            if has_records or txn.stat(self._zones_db)["entries"]:
                raise ReplayLogCorrupt(self.path, "records without a format version")
            if not self.readonly:
                txn.put(K.META_VERSION, K.U32.pack(K.FORMAT_VERSION), db=meta)
        elif K.U32.unpack(version)[0] != K.FORMAT_VERSION:
            raise ReplayLogCorrupt(self.path, f"format version {K.U32.unpack(version)[0]},"
                                   f" this router reads {K.FORMAT_VERSION}")
        for raw, packed in txn.cursor(db=self._zones_db):
            name = raw.decode("utf-8")
            (zid,) = K.ZONE_ID.unpack(packed)
            self._ids[name] = zid
            self._names[zid] = name
        if len(self._names) != txn.stat(self._zone_names_db)["entries"]:
            raise ReplayLogCorrupt(self.path, "the zone tables disagree")
        next_zone = txn.get(K.META_NEXT_ZONE, db=meta)
        self._next_zone = K.U32.unpack(next_zone)[0] if next_zone else 0
        if self._names and max(self._names) >= self._next_zone:
            raise ReplayLogCorrupt(self.path, "zone id above the allocation mark")
        cur = txn.cursor(db=meta)
        if cur.set_range(K.META_ZONE_PREFIX):
            for k, v in cur:
                if not k.startswith(K.META_ZONE_PREFIX):
                    break
                (zid,) = K.ZONE_ID.unpack(k[1:])
                if zid not in self._names:
                    raise ReplayLogCorrupt(self.path, f"counters for unknown zone id {zid}")
                z = _Zone(zid, self._names[zid], *K.ZONE_META.unpack(v))
                self._zones[zid] = z
                self._newest_ts = max(self._newest_ts, z.newest_ts)
        total = txn.get(K.META_TOTAL, db=meta)
        self._total_records, self._total_bytes = K.TOTALS.unpack(total) if total else (0, 0)
        records = sum(z.records for z in self._zones.values())
        nbytes = sum(z.bytes for z in self._zones.values())
        if (records, nbytes) != (self._total_records, self._total_bytes) or (
                records != txn.stat(self._records_db)["entries"]):
            raise ReplayLogCorrupt(self.path, "record counters do not match the records")
        # The first and last records must parse and belong to known zones.
        rc = txn.cursor(db=self._records_db)
        for ok in (rc.first(), rc.last()):
            if ok:
                zid, seq = K.split_key(rc.key())
                z = self._zones.get(zid)
                if z is None or seq > z.last_seq or len(rc.value()) < K.HEADER_SIZE:
                    raise ReplayLogCorrupt(self.path, f"record ({zid}, {seq}) does not "
                                           "match the zone counters")
        stored = txn.get(K.META_MAP_SIZE, db=meta)
        self._stored_map_size = K.U64.unpack(stored)[0] if stored else 0
        self._pending_map_size = 0
        if not self.readonly and self._stored_map_size > self._map_size:
            self._pending_map_size = min(self._stored_map_size, self.max_map_size)

    def _release(self) -> None:
        if self._env is not None:
            try:
                self._env.close()
            except lmdb.Error:
                pass
            self._env = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- housekeeping ------------------------------------------------------------------

    def _check(self, write: bool = False) -> lmdb.Environment:
        if self._closed or self._env is None:
            raise InvalidState("replay log store is closed")
        if os.getpid() != self._pid:
            raise InvalidState(f"replay log store opened in process {self._pid} used in "
                               f"process {os.getpid()}: open it after fork()")
        if write and self.readonly:
            raise InvalidState("replay log store is open read-only")
        return self._env

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Sync (when commits are not synced) and close. Idempotent."""
        with self._write_lock:
            if self._closed:
                return
            if os.getpid() != self._pid:
                # Never touch an inherited environment; just forget it.
                self._closed = True
                return
            with self._gate.exclusive():
                env = self._env
                if env is not None and not self.readonly and not self.sync_commits:
                    try:
                        env.sync(True)
                    except lmdb.Error as e:
                        log.error("replay log %s: final sync failed: %s", self.path, e)
                self._closed = True
                self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def sync(self) -> None:
        """Force the OS to write committed pages to disk (useful with ``sync=False``)."""
        env = self._check(write=True)
        with self._write_lock:
            env.sync(True)

    @property
    def total_bytes(self) -> int:
        """Stored key + value bytes of the whole log (committed)."""
        return self._total_bytes

    @property
    def total_records(self) -> int:
        return self._total_records

    @property
    def map_size(self) -> int:
        return self._map_size

    def _effective_cap(self) -> int:
        cap = self.max_bytes
        if self._soft_cap is not None and self._soft_cap < cap:
            cap = self._soft_cap
        return cap

    def _warn_once(self, key: str, msg: str, *args: object, level: int = logging.WARNING
                   ) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.log(level, msg, *args)

    def _note_evicted(self, zone: str, count: int) -> None:
        self._evicted_total += count
        if zone not in self._warned_evicted:
            self._warned_evicted.add(zone)
            log.warning("replay log: evicted %d record(s) of zone %r, oldest first, to stay "
                        "within the byte cap (%d bytes); further evictions for this zone "
                        "are only counted (stats: evicted)", count, zone,
                        self._effective_cap())

    # -- the write path ----------------------------------------------------------------

    def _write(self, fn: Callable[[_Write], _T]) -> _T:
        """Run ``fn`` in one write transaction; publish the in-memory state on commit."""
        env = self._env
        assert env is not None
        with env.begin(write=True, buffers=True) as txn:
            w = _Write(self, txn)
            result = fn(w)
            w.finish()
        w.publish()
        return result

    def _resize(self, new_size: int) -> None:
        env = self._env
        assert env is not None
        with self._gate.exclusive():
            env.set_mapsize(new_size)
            self._map_size = env.info()["map_size"]

    def _grow(self) -> bool:
        """Double the map (up to ``max_map_size``). False when it is already there."""
        if self._map_size >= self.max_map_size:
            return False
        new = min(max(self._map_size * 2, self._map_size + MiB), self.max_map_size)
        new -= new % self._psize
        if new <= self._map_size:
            return False
        old = self._map_size
        self._resize(new)
        self.map_grown += 1
        log.info("replay log %s: map grown from %d to %d bytes (max %d)", self.path, old,
                 self._map_size, self.max_map_size)
        return True

    def append_many(self, records: Sequence[tuple[str, float, bytes, str | None]]) -> int:
        """Store ``records`` = ``[(zone, ts, frame, object_zone), ...]`` in ONE transaction.

        Records keep their order within each zone. When the transaction commits they are
        durable (``sync=True``) or at least safe from a process crash (``sync=False``).
        The byte cap is enforced in the same transaction.

        A full map is never raised: the map is grown (doubling up to ``max_map_size``)
        and the batch retried; when it cannot grow, the oldest records are evicted (and
        the cap lowered to what fits) and the batch retried; a batch that does not fit an
        empty map is split, and a single record bigger than the map is dropped, counted
        (``dropped``) and logged.

        Returns:
            The seq given to the last record of ``records`` (0 when empty or dropped).

        Raises:
            ReplayLogDiskFull: the file system is full even after evicting records; the
                batch was not stored (nothing was half-written).
            ValueError: a zone name is empty or longer than 511 bytes in UTF-8.
        """
        self._check(write=True)
        if not records:
            return 0
        with self._write_lock:
            return self._append_retrying(records)

    def _append_retrying(self, records: Sequence[tuple[str, float, bytes, str | None]]
                         ) -> int:
        disk_retry = True
        while True:
            try:
                return self._write(lambda w: self._append(w, records))
            except lmdb.MapFullError:
                self.map_full += 1
                self._warn_once("map_full", "replay log %s: LMDB map full at %d bytes "
                                "(max_map_size %d); growing or evicting, see stats()",
                                self.path, self._map_size, self.max_map_size)
                if self._grow():
                    continue
                size = sum(len(r[2]) + K.KEY_SIZE + K.HEADER_SIZE for r in records)
                # Evicting only helps a batch that is a modest share of the map; a bigger
                # one is split (and a single huge record dropped) without evicting.
                if size <= self._map_size // 4 and self._make_room(2 * size
                                                                   + 4 * self._psize):
                    continue
                # Nothing (more) can be evicted and the batch still does not fit.
                if len(records) > 1:
                    half = len(records) // 2
                    first = self._append_retrying(records[:half])
                    last = self._append_retrying(records[half:])
                    return last or first
                self.dropped += 1
                self._warn_once("dropped", "replay log %s: dropped a %d-byte record for "
                                "zone %r: it does not fit in a map of %d bytes (further "
                                "drops are only counted: stats dropped)", self.path,
                                len(records[0][2]), records[0][0], self._map_size,
                                level=logging.ERROR)
                return 0
            except _CORRUPTION as e:
                raise ReplayLogCorrupt(self.path, _describe(e)) from e
            except lmdb.DiskError as e:
                self.disk_full += 1
                log.error("replay log %s: disk full (%s)", self.path, e)
                if disk_retry and self._total_records:
                    # Pages freed now are reused by later commits instead of growing the
                    # file: evict a quarter of the log, then try once more.
                    disk_retry = False
                    target = self._total_bytes * 3 // 4
                    self._soft_cap = target
                    try:
                        self._evict_and_tick(target)
                    except (lmdb.DiskError, lmdb.MapFullError):
                        pass
                    else:
                        continue
                raise ReplayLogDiskFull(f"replay log {self.path}: disk full, "
                                        f"{len(records)} record(s) not stored") from e
            except lmdb.Error as e:
                raise ReplayLogError(f"replay log {self.path}: {_describe(e)}") from e

    def _append(self, w: _Write, records: Sequence[tuple[str, float, bytes, str | None]]
                ) -> int:
        groups: dict[str, list[tuple[str, float, bytes, str | None]]] = {}
        for rec in records:
            g = groups.get(rec[0])
            if g is None:
                groups[rec[0]] = g = []
            g.append(rec)
        ordered = sorted((w.zone_id(zone), zone, g) for zone, g in groups.items())
        txn = w.txn
        cur = txn.cursor(db=self._records_db)
        last_key = bytes(cur.key()) if cur.last() else b""
        pack_key = K.record_key
        pack_header = K.HEADER.pack
        ids = self._ids
        no_zone = K.NO_ZONE
        seqs: dict[str, int] = {}
        for zid, zone, g in ordered:
            z = w.zone(zid, zone)
            seq = z.last_seq
            newest = z.newest_ts if z.records else -math.inf
            disorder = False
            items = []
            nbytes = 0
            for _zone, ts, frame, object_zone in g:
                if object_zone is None:
                    ozid = no_zone
                else:
                    ozid = ids.get(object_zone)
                    if ozid is None:
                        ozid = w.zone_id(object_zone)
                seq += 1
                value = pack_header(ts, ozid) + frame
                nbytes += len(value)
                items.append((pack_key(zid, seq), value))
                if ts < newest:
                    disorder = True
                else:
                    newest = ts
            append = items[0][0] > last_key
            consumed, added = cur.putmulti(items, append=append, overwrite=False)
            if added != consumed:
                raise ReplayLogError(f"replay log {self.path}: zone {zone!r} seq "
                                     f"{z.last_seq + 1}..{seq} already present (damaged "
                                     "counters?)")
            if append:
                last_key = items[-1][0]
            n = len(items)
            nbytes += n * K.KEY_SIZE
            z.records += n
            z.bytes += nbytes
            z.last_seq = seq
            z.newest_ts = newest
            if disorder:
                z.flags |= K.FLAG_DISORDER
            w.total_records += n
            w.total_bytes += nbytes
            seqs[zone] = seq
        cap = self._effective_cap()
        if w.total_bytes > cap:
            self._evict(w, cap)
        return seqs[records[-1][0]]

    def _evict(self, w: _Write, target: int) -> dict[str, int]:
        """Delete the oldest records across zones until ``w.total_bytes <= target``."""
        cur = w.txn.cursor(db=self._records_db)
        heap: list[tuple[float, int, int]] = []
        for z in w.live_zones():
            if cur.set_range(K.record_key(z.id, 0)):
                zid, seq = K.split_key(cur.key())
                if zid == z.id:
                    heap.append((K.HEADER.unpack_from(cur.value())[0], zid, seq))
        heapq.heapify(heap)
        evicted: dict[str, int] = {}
        unpack_header = K.HEADER.unpack_from
        while heap and w.total_bytes > target:
            _, zid, seq = heapq.heappop(heap)
            # Delete this zone's run while it stays older than the next zone's head.
            limit = heap[0][0] if heap else math.inf
            z = w.zone(zid, self._names.get(zid) or "")
            if not cur.set_key(K.record_key(zid, seq)):
                continue
            count = nbytes = 0
            while True:
                nbytes += K.KEY_SIZE + len(cur.value())
                count += 1
                cur.delete()
                if w.total_bytes - nbytes <= target:
                    break
                key = cur.key()
                if not key:
                    break
                nzid, nseq = K.split_key(key)
                if nzid != zid:
                    break
                ts = unpack_header(cur.value())[0]
                if ts > limit:
                    heapq.heappush(heap, (ts, zid, nseq))
                    break
            z.removed(count, nbytes)
            z.evicted += count
            w.total_records -= count
            w.total_bytes -= nbytes
            evicted[z.name] = evicted.get(z.name, 0) + count
        for name, count in evicted.items():
            w.evicted[name] = w.evicted.get(name, 0) + count
        return evicted

    def _make_room(self, needed: int) -> bool:
        """After a full map at its maximum: lower the cap by ``needed`` and evict."""
        if not self._total_records:
            return False
        held = min(self._total_bytes, self._effective_cap())
        # Make room for this batch, but never give up more than half of what fitted
        # (small maps: the batch may be a large share of the map).
        target = max(held - needed, held // 2)
        if self._soft_cap is None or target < self._soft_cap:
            self._soft_cap = target
            self._warn_once("soft_cap", "replay log %s: the map is full at its maximum "
                            "(%d bytes); keeping at most %d bytes of records from now on",
                            self.path, self._map_size, target)
        before = self._total_records
        try:
            self._evict_and_tick(target)
        except lmdb.MapFullError:
            if self._emergency_used:
                return False
            # Deleting needs a few fresh pages too (copy-on-write). Give LMDB a little
            # room past the maximum, once per process; it is address space, the file
            # only grows by the pages actually used.
            self._emergency_used = True
            extra = max(32 * self._psize, self.max_map_size // 32)
            extra -= extra % self._psize
            log.warning("replay log %s: map too full to evict; growing it by %d bytes "
                        "past max_map_size (once)", self.path, extra)
            self.max_map_size += extra
            self._resize(self._map_size + extra)
            try:
                self._evict_and_tick(target)
            except lmdb.MapFullError:
                return False
        return self._total_records < before

    def _evict_and_tick(self, target: int) -> None:
        self._write(lambda w: self._evict(w, target))
        # LMDB reuses a page freed by transaction N from transaction N+2 on (the previous
        # snapshot must stay intact): one small commit makes the freed pages usable for
        # the retry right away.
        self._write(lambda w: w.txn.put(K.META_VERSION, K.U32.pack(K.FORMAT_VERSION),
                                        db=self._meta_db))

    # -- retention -----------------------------------------------------------------------

    def enforce_cap(self, max_bytes: int | None = None) -> dict[str, int]:
        """Evict oldest-first across zones until the log is within its byte cap.

        Args:
            max_bytes: a new cap to keep from now on (default: the current one).

        Returns:
            Records evicted per zone (empty when already within the cap).
        """
        self._check(write=True)
        with self._write_lock:
            if max_bytes is not None:
                self.max_bytes = max_bytes
            cap = self._effective_cap()
            if self._total_bytes <= cap:
                return {}
            return self._write(lambda w: self._evict(w, cap))

    def prune(self, now: float, zones_endpoints: Mapping[str, Sequence[str]],
              log_duration: Mapping[str, float], *,
              default_duration: float = DEFAULT_LOG_DURATION) -> PruneStats:
        """Delete the records nobody needs any more (Icinga's log cleanup).

        Only zones named in ``zones_endpoints`` are looked at. For such a zone, an
        endpoint is *eligible* unless its ``log_duration`` (``log_duration[ep]``, else
        ``default_duration``) is 0. A record is deleted once, for every eligible
        endpoint, it is confirmed (``ts <= position(ep)``) or older than that endpoint's
        retention (``ts < now - log_duration``; a negative duration never expires). In
        particular records every eligible endpoint has confirmed go, and so do records
        older than the largest duration. A zone without eligible endpoints (all 0, or an
        empty list) keeps nothing. Deletion stops at the first record still needed, so
        the live records of a zone stay a contiguous range.
        """
        self._check(write=True)
        with self._write_lock:
            return self._write(lambda w: self._prune(w, now, zones_endpoints, log_duration,
                                                     default_duration))

    def _prune(self, w: _Write, now: float, zones_endpoints: Mapping[str, Sequence[str]],
               log_duration: Mapping[str, float], default_duration: float) -> PruneStats:
        stats = PruneStats()
        txn = w.txn
        cur = txn.cursor(db=self._records_db)
        unpack_header = K.HEADER.unpack_from
        freed = 0
        for zone, endpoints in zones_endpoints.items():
            zid = self._ids.get(zone)
            z = self._zones.get(zid) if zid is not None else None
            if z is None or not z.records:
                continue
            confirmed = math.inf      # min over eligible endpoints of the position
            cutoff = math.inf         # min over eligible endpoints of max(position, expiry)
            for ep in endpoints:
                duration = log_duration.get(ep, default_duration)
                if duration == 0:
                    continue
                raw = txn.get(K.encode_name(ep), db=self._positions_db)
                pos = K.POSITION.unpack(raw)[0] if raw else 0.0
                expiry = now - duration if duration > 0 else -math.inf
                confirmed = min(confirmed, pos)
                cutoff = min(cutoff, max(pos, expiry))
            if not cur.set_range(K.record_key(zid, 0)):
                continue
            count = {"confirmed": 0, "expired": 0, "disabled": 0}
            nbytes = 0
            while True:
                key = cur.key()
                if not key or K.split_key(key)[0] != zid:
                    break
                value = cur.value()
                ts = unpack_header(value)[0]
                if ts > cutoff:
                    break
                kind = ("disabled" if cutoff == math.inf else
                        "confirmed" if ts <= confirmed else "expired")
                count[kind] += 1
                nbytes += K.KEY_SIZE + len(value)
                cur.delete()
            n = sum(count.values())
            if n:
                wz = w.zone(zid, zone)
                wz.removed(n, nbytes)
                w.total_records -= n
                w.total_bytes -= nbytes
                freed += nbytes
                for kind, value in count.items():
                    if value:
                        getattr(stats, kind)[zone] = value
        if freed:
            log.debug("replay log: pruned %d record(s), %d bytes", stats.total, freed)
        return PruneStats(stats.confirmed, stats.expired, stats.disabled, freed)

    # -- positions ---------------------------------------------------------------------

    def confirm(self, endpoint: str, ts: float, *, now: float | None = None) -> float:
        """Record that ``endpoint`` has everything up to ``ts`` (``log::SetLogPosition``).

        Positions only move forward (Icinga raises ``local_log_position`` only when the
        new value is larger), so a position far in the past is accepted and changes
        nothing. A position more than ``FUTURE_SLACK`` (1 day) ahead of the reference
        time (``now`` when given, else the later of the newest stored ``ts`` and the
        clock) is clamped *to* the reference time, counted and logged once per endpoint:
        keeping it would make the peer skip every record for that long.

        Returns:
            The endpoint's position after the call.
        """
        raw_name = K.encode_name(endpoint)
        self._check(write=True)
        ts = float(ts)
        if math.isnan(ts):
            self._warn_once(f"nan:{endpoint}", "replay log: endpoint %r confirmed a NaN "
                            "log position; ignored", endpoint)
            return self.position(endpoint)
        reference = now if now is not None else max(self._newest_ts, time.time())
        if ts > reference + FUTURE_SLACK:
            self.clamped_positions += 1
            if endpoint not in self._warned_clamped:
                self._warned_clamped.add(endpoint)
                log.warning("replay log: endpoint %r confirmed log position %r, more than "
                            "%d s in the future; clamped to %r (logged once per endpoint)",
                            endpoint, ts, FUTURE_SLACK, reference)
            ts = reference
        with self._write_lock:
            def write(w: _Write) -> float:
                old = w.txn.get(raw_name, db=self._positions_db)
                current = K.POSITION.unpack(old)[0] if old else 0.0
                if ts > current:
                    w.txn.put(raw_name, K.POSITION.pack(ts), db=self._positions_db)
                    return ts
                return current
            return self._write(write)

    def zone_records(self, zone: str) -> int:
        """Committed records of ``zone`` (0 for a zone never written).

        Lock-free and cheap: it reads the in-memory mirror the writer publishes after each
        commit, so the event loop can ask it for every connecting endpoint.
        """
        zid = self._ids.get(zone)
        state = self._zones.get(zid) if zid is not None else None
        return state.records if state is not None else 0

    def position(self, endpoint: str) -> float:
        """The confirmed position of ``endpoint`` (0.0 when it never confirmed)."""
        raw_name = K.encode_name(endpoint)

        def read(txn: lmdb.Transaction) -> float:
            raw = txn.get(raw_name, db=self._positions_db)
            return K.POSITION.unpack(raw)[0] if raw else 0.0
        return self._read(read)

    def positions(self) -> dict[str, float]:
        """Every confirmed position."""
        def read(txn: lmdb.Transaction) -> dict[str, float]:
            return {bytes(k).decode("utf-8"): K.POSITION.unpack(v)[0]
                    for k, v in txn.cursor(db=self._positions_db)}
        return self._read(read)

    # -- the read path -----------------------------------------------------------------

    def _read(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        """Run ``fn`` in a short read transaction (``buffers=True``), any thread."""
        env = self._check()
        for _ in range(3):
            try:
                with self._gate.shared(), env.begin(buffers=True) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                # Another process grew the map (we are a read-only tool): adopt it.
                with self._gate.exclusive():
                    env.set_mapsize(0)
                    self._map_size = env.info()["map_size"]
            except _CORRUPTION as e:
                raise ReplayLogCorrupt(self.path, _describe(e)) from e
        raise ReplayLogError(f"replay log {self.path}: the map keeps being resized")

    def read_batch(self, zone: str, after_ts: float = -math.inf, *, after_seq: int = 0,
                   limit: int = READ_CHUNK, max_bytes: int = READ_CHUNK_BYTES
                   ) -> list[Record]:
        """Up to ``limit`` records of ``zone`` with ``ts > after_ts`` and ``seq > after_seq``.

        One read transaction; stops early once ``max_bytes`` of frames are collected
        (always returns at least one record when there is one). Records are in seq
        order. Frames are copied out of the map once each (``bytes(view)``): they
        must outlive the transaction, and that copy is the only one on the read path.

        Seeking: with ``after_seq`` it starts right there; otherwise, when the zone's
        ``ts`` has never gone backwards, it binary-searches for the first record after
        ``after_ts``; when it has (clock stepped back), it starts at the zone's first
        record and filters, so no record with ``ts > after_ts`` is ever skipped.
        """
        if limit <= 0:
            return []
        raw_zone = K.encode_name(zone)

        def read(txn: lmdb.Transaction) -> list[Record]:
            packed = txn.get(raw_zone, db=self._zones_db)
            if packed is None:
                return []
            (zid,) = K.ZONE_ID.unpack(packed)
            cur = txn.cursor(db=self._records_db)
            if after_seq > 0:
                start = after_seq + 1
            elif after_ts == -math.inf:
                start = 0
            else:
                meta = txn.get(K.zone_meta_key(zid), db=self._meta_db)
                flags = K.ZONE_META.unpack(meta)[5] if meta else 0
                start = 0 if flags & K.FLAG_DISORDER else self._seek_ts(cur, zid, after_ts)
                if start is None:
                    return []
            if not cur.set_range(K.record_key(zid, start)):
                return []
            out: list[Record] = []
            size = 0
            split_key = K.split_key
            unpack_header = K.HEADER.unpack_from
            names = self._names
            header_size = K.HEADER_SIZE
            for key, value in cur:
                kzid, seq = split_key(key)
                if kzid != zid:
                    break
                ts, ozid = unpack_header(value)
                if ts <= after_ts:
                    continue
                if ozid == K.NO_ZONE:
                    object_zone = None
                else:
                    object_zone = names.get(ozid)
                    if object_zone is None:
                        object_zone = self._zone_name(txn, ozid)
                frame = bytes(value[header_size:])   # the one copy out of the map
                out.append(Record(seq, ts, frame, object_zone))
                size += len(frame)
                if len(out) >= limit or size >= max_bytes:
                    break
            return out
        return self._read(read)

    def _zone_name(self, txn: lmdb.Transaction, zid: int) -> str:
        raw = txn.get(K.ZONE_ID.pack(zid), db=self._zone_names_db)
        if raw is None:
            raise ReplayLogCorrupt(self.path, f"a record names unknown zone id {zid}")
        name = bytes(raw).decode("utf-8")
        self._names.setdefault(zid, name)   # ids are never reused: safe to cache
        return name

    @staticmethod
    def _seek_ts(cur: lmdb.Cursor, zid: int, after_ts: float) -> int | None:
        """First seq of zone ``zid`` whose record has ``ts > after_ts`` (ts monotonic)."""
        split_key = K.split_key
        unpack_header = K.HEADER.unpack_from
        if not cur.set_range(K.record_key(zid, 0)):
            return None
        kzid, lo = split_key(cur.key())
        if kzid != zid:
            return None
        if unpack_header(cur.value())[0] > after_ts:
            return lo
        # Last record of the zone.
        if zid < K.MAX_ZONE_ID and cur.set_range(K.record_key(zid + 1, 0)):
            cur.prev()
        else:
            cur.last()
        _, hi = split_key(cur.key())
        if unpack_header(cur.value())[0] <= after_ts:
            return None
        # f(s) = ts of the first record with seq >= s: monotonic, f(lo) <= after_ts < f(hi).
        while lo < hi:
            mid = (lo + hi) // 2
            cur.set_range(K.record_key(zid, mid))
            if unpack_header(cur.value())[0] > after_ts:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def iter_from(self, zone: str, after_ts: float = -math.inf, *, limit: int | None = None,
                  chunk: int = READ_CHUNK) -> Iterator[Record]:
        """Every record of ``zone`` with ``ts > after_ts``, in order, ``limit`` at most.

        Safe from any thread. Reads ``chunk`` records per read transaction and yields
        them after it ended (see ``read_batch``), so the consumer may be slow. The
        iteration is live: records appended while it runs are yielded too, and it ends
        at the first empty chunk. Records pruned or evicted meanwhile are skipped.
        """
        after_seq = 0
        remaining = math.inf if limit is None else limit
        while remaining > 0:
            batch = self.read_batch(zone, after_ts, after_seq=after_seq,
                                    limit=int(min(chunk, remaining)))
            if not batch:
                return
            yield from batch
            remaining -= len(batch)
            after_seq = batch[-1].seq

    # -- statistics --------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters for ``/v1/status`` and ``router replaylog stats`` (no scan).

        Keys: ``path``, ``records``, ``bytes`` (key + value bytes stored), ``max_bytes``,
        ``map_size``, ``max_map_size``, ``used_bytes`` (LMDB pages in use),
        ``file_bytes`` (size of ``data.mdb``), ``evicted`` (all time, from the file),
        ``map_full``, ``map_grown``, ``dropped``, ``disk_full``, ``clamped_positions``
        (this process), and ``zones``: ``{zone: {records, bytes, oldest_ts, newest_ts,
        last_seq, evicted}}`` for every zone that ever held a record (``oldest_ts`` and
        ``newest_ts`` are None when it is empty).
        """
        env = self._check()

        def read(txn: lmdb.Transaction) -> dict:
            zones: dict[str, dict] = {}
            evicted = 0
            meta = txn.cursor(db=self._meta_db)
            records = txn.cursor(db=self._records_db)
            if meta.set_range(K.META_ZONE_PREFIX):
                for k, v in meta:
                    if bytes(k[:1]) != K.META_ZONE_PREFIX:
                        break
                    (zid,) = K.ZONE_ID.unpack(k[1:])
                    n, nbytes, last_seq, ev, newest, _flags = K.ZONE_META.unpack(v)
                    oldest = None
                    if n and records.set_range(K.record_key(zid, 0)):
                        oldest = K.HEADER.unpack_from(records.value())[0]
                    name = self._names.get(zid) or self._zone_name(txn, zid)
                    zones[name] = {"records": n, "bytes": nbytes, "oldest_ts": oldest,
                                   "newest_ts": newest if n else None,
                                   "last_seq": last_seq, "evicted": ev}
                    evicted += ev
            total = txn.get(K.META_TOTAL, db=self._meta_db)
            n, nbytes = K.TOTALS.unpack(total) if total else (0, 0)
            # env.info() reads the meta page from the map: inside the gate, like a read.
            return {"records": n, "bytes": nbytes, "evicted": evicted, "zones": zones,
                    "_info": env.info()}
        out = self._read(read)
        info = out.pop("_info")
        try:
            file_bytes = (self.path / "data.mdb").stat().st_size
        except OSError:
            file_bytes = None
        out.update({
            "path": str(self.path), "max_bytes": self.max_bytes,
            "effective_max_bytes": self._effective_cap(),
            "map_size": info["map_size"], "max_map_size": self.max_map_size,
            "used_bytes": (info["last_pgno"] + 1) * self._psize, "file_bytes": file_bytes,
            "map_full": self.map_full, "map_grown": self.map_grown, "dropped": self.dropped,
            "disk_full": self.disk_full, "clamped_positions": self.clamped_positions,
        })
        return out


# -- helpers ------------------------------------------------------------------------------

def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _acquire_lock(path: Path) -> int:
    """Take the single-writer lock of the log at ``path`` (released by closing the fd)."""
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise ReplayLogError(f"replay log lock {lock_path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ReplayLogBusy(f"replay log {path} is open for writing elsewhere "
                                "(another router process, or another store here)") from e
        raise ReplayLogError(f"replay log lock {lock_path}: {e.strerror}") from e
    return fd


def reset(path: str | os.PathLike[str]) -> Path | None:
    """Move a (broken) replay log aside and create an empty one in its place.

    The old directory becomes ``<path>.broken-<unix time>`` (with ``-N`` appended if
    that exists), kept for inspection: nothing is deleted. Refuses while a process has
    the log open for writing. This is what ``router replaylog reset --data-dir DIR``
    runs on ``DIR/replaylog``.

    Returns:
        Where the old log went, or None when there was nothing at ``path``.

    Raises:
        ReplayLogBusy: the log is in use.
        ReplayLogError: the directory cannot be moved or created.
    """
    path = Path(path)
    moved: Path | None = None
    if path.exists() or path.is_symlink():
        if path.is_dir():
            os.close(_acquire_lock(path))   # refuse while a router has it open
        stamp = int(time.time())
        moved = path.with_name(f"{path.name}.broken-{stamp}")
        n = 0
        while moved.exists():
            n += 1
            moved = path.with_name(f"{path.name}.broken-{stamp}-{n}")
        try:
            path.rename(moved)
        except OSError as e:
            raise ReplayLogError(f"cannot move {path} aside: {e.strerror}") from e
        log.warning("replay log %s moved aside to %s; starting an empty log", path, moved)
    ReplayStore(path).close()
    return moved
