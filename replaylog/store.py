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

Modules
-------
``ReplayStore`` is assembled from layers, each in its own module, each importing only
the ones below it: ``env`` (the LMDB environment: open, lock, fork guard, map growth,
close), ``state`` (sub-databases, the mirror of the counters, write transactions), then
``retention`` (prune, byte cap, eviction), ``append`` (the write path, full map and full
disk), ``positions`` (confirmed positions) and ``read`` (``read_batch``, ``iter_from``).
This module puts them together, reports ``stats()`` and holds ``reset()``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import lmdb

from . import keys as K
from .append import AppendOps
from .env import DEFAULT_MAP_SIZE, LOCK_FILE, GiB, Gate, KiB, MiB, acquire_lock
from .errors import ReplayLogError
from .lmdbfile import aside_name
from .positions import FUTURE_SLACK, PositionOps
from .read import READ_CHUNK, READ_CHUNK_BYTES, ReadOps, Record
from .retention import DEFAULT_LOG_DURATION, DEFAULT_MAX_BYTES, PruneStats

__all__ = [
    "DEFAULT_LOG_DURATION", "DEFAULT_MAP_SIZE", "DEFAULT_MAX_BYTES", "FUTURE_SLACK",
    "LOCK_FILE", "READ_CHUNK", "READ_CHUNK_BYTES", "GiB", "KiB", "MiB", "PruneStats",
    "Record", "ReplayStore", "reset",
]

log = logging.getLogger("router.replaylog")


class ReplayStore(AppendOps, PositionOps, ReadOps):
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
        self._gate = Gate()
        # Committed state, mirrored from the file (changed only by WriteTxn.publish).
        self._ids = {}
        self._names = {}
        self._zones = {}
        self._total_records = 0
        self._total_bytes = 0
        self._next_zone = 0
        self._stored_map_size = 0
        self._newest_ts = 0.0
        # Process-local counters (stats()).
        self._soft_cap = None   # lowered cap after a full map at its maximum
        self._disk_cap = None   # lowered cap after a full disk, while it is full
        self._disk_room = 0
        self._emergency_used = False
        self.map_full = 0            # MapFullError seen on a write
        self.map_grown = 0           # ... resolved by growing the map
        self.dropped = 0             # records that fit in no map at all (bigger than it)
        self.disk_full = 0           # ENOSPC seen on a write
        self.disk_reserve_used = 0   # ... where eviction needed the disk reserve
        self.clamped_positions = 0   # confirmed positions clamped from the future
        self._evicted_total = 0      # evicted by this process (the file keeps the totals)
        self._warned_evicted = set()
        self._warned_clamped = set()
        self._warned = set()
        self._lock_fd = None
        self._env = None

        if not readonly:
            self._create_dir()
            self._lock_fd = acquire_lock(self.path)
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
    def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> ReplayStore:
        """``ReplayStore.open(path, *, map_size, max_bytes, max_map_size, sync, readonly)``."""
        return cls(path, **kwargs)

    # -- statistics --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for ``/v1/status`` and ``router replaylog stats`` (no scan).

        Keys: ``path``, ``records``, ``bytes`` (key + value bytes stored), ``max_bytes``,
        ``map_size``, ``max_map_size``, ``used_bytes`` (LMDB pages in use),
        ``file_bytes`` (size of ``data.mdb``), ``evicted`` (all time, from the file),
        ``map_full``, ``map_grown``, ``dropped``, ``disk_full``, ``disk_reserve_used``,
        ``clamped_positions``
        (this process), and ``zones``: ``{zone: {records, bytes, oldest_ts, newest_ts,
        last_seq, evicted}}`` for every zone that ever held a record (``oldest_ts`` and
        ``newest_ts`` are None when it is empty).
        """
        env = self._check()

        def read(txn: lmdb.Transaction) -> dict[str, Any]:
            zones: dict[str, dict[str, Any]] = {}
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
            "disk_full": self.disk_full, "disk_reserve_used": self.disk_reserve_used,
            "clamped_positions": self.clamped_positions,
        })
        return out


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
            os.close(acquire_lock(path))   # refuse while a router has it open
        moved = aside_name(path)
        try:
            path.rename(moved)
        except OSError as e:
            raise ReplayLogError(f"cannot move {path} aside: {e.strerror}") from e
        log.warning("replay log %s moved aside to %s; starting an empty log", path, moved)
    ReplayStore(path).close()
    return moved
