"""The replay log's committed state: sub-databases, zone ids, counters, write transactions.

``StateBase`` (on ``env.EnvBase``) opens the sub-databases and loads the in-memory
mirror of the ``zones`` and ``meta`` sub-databases (zone ids, per-zone
``ZoneCounters``, totals), checking what is cheap to check at open. Every write runs in
``_write``: a ``WriteTxn`` collects what one LMDB write transaction changes and
publishes it to the mirror only once the transaction has committed.
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import lmdb

from . import keys as K
from .env import DAMAGED_ENTRY, EnvBase
from .lmdbfile import CORRUPTION, describe
from .errors import ReplayLogCorrupt, ReplayLogError

log = logging.getLogger("router.replaylog")

_T = TypeVar("_T")


@dataclass(slots=True)
class ZoneCounters:
    """Counters of one target zone, mirrored in ``meta`` (``keys.ZONE_META``)."""

    id: int
    name: str
    records: int = 0
    bytes: int = 0
    last_seq: int = 0
    evicted: int = 0
    newest_ts: float = 0.0
    flags: int = 0

    def copy(self) -> ZoneCounters:
        return ZoneCounters(self.id, self.name, self.records, self.bytes, self.last_seq,
                            self.evicted, self.newest_ts, self.flags)

    def pack(self) -> builtins.bytes:   # (the field ``bytes`` shadows the type)
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


class WriteTxn:
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

    def __init__(self, store: StateBase, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.zones: dict[int, ZoneCounters] = {}
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

    def zone(self, zid: int, name: str) -> ZoneCounters:
        """A mutable copy of zone ``zid``'s counters."""
        z = self.zones.get(zid)
        if z is None:
            base = self.store._zones.get(zid)
            z = base.copy() if base is not None else ZoneCounters(zid, name)
            self.zones[zid] = z
        return z

    def live_zones(self) -> list[ZoneCounters]:
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


class StateBase(EnvBase):
    """The sub-databases and the mirror of the committed counters (layer 2 of the store)."""

    max_bytes: int                      # the byte cap (enforce_cap may change it)
    # Committed state, mirrored from the file (changed only by WriteTxn.publish).
    _ids: dict[str, int]
    _names: dict[int, str]
    _zones: dict[int, ZoneCounters]
    _total_records: int
    _total_bytes: int
    _next_zone: int
    _stored_map_size: int
    _newest_ts: float
    _pending_map_size: int              # the map a previous run grew to (set by _load)
    _soft_cap: int | None               # lowered cap after a full map at its maximum
    _disk_cap: int | None               # lowered cap after a full disk, while it is full
    _disk_room: int                     # free bytes on the disk that lift _disk_cap
    _evicted_total: int                 # evicted by this process (the file keeps totals)
    _warned_evicted: set[str]

    # -- loading -----------------------------------------------------------------------

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
        except (*CORRUPTION, *DAMAGED_ENTRY, lmdb.BadValsizeError, ValueError) as e:
            # struct.error (no ValueError): a meta entry or key of the wrong size.
            raise ReplayLogCorrupt(self.path, describe(e)) from e
        except lmdb.Error as e:
            raise ReplayLogError(f"cannot open replay log {self.path}: {describe(e)}") from e

    def _load_in(self, txn: lmdb.Transaction[bytes]) -> None:
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
                z = ZoneCounters(zid, self._names[zid], *K.ZONE_META.unpack(v))
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
                counters = self._zones.get(zid)
                if (counters is None or seq > counters.last_seq
                        or len(rc.value()) < K.HEADER_SIZE):
                    raise ReplayLogCorrupt(self.path, f"record ({zid}, {seq}) does not "
                                           "match the zone counters")
        stored = txn.get(K.META_MAP_SIZE, db=meta)
        self._stored_map_size = K.U64.unpack(stored)[0] if stored else 0
        self._pending_map_size = 0
        if not self.readonly and self._stored_map_size > self._map_size:
            self._pending_map_size = min(self._stored_map_size, self.max_map_size)

    # -- the write path ----------------------------------------------------------------

    def _write(self, fn: Callable[[WriteTxn], _T]) -> _T:
        """Run ``fn`` in one write transaction; publish the in-memory state on commit."""
        env = self._env
        assert env is not None
        with env.begin(write=True, buffers=True) as txn:
            w = WriteTxn(self, txn)
            result = fn(w)
            w.finish()
        w.publish()
        return result

    def rename_zone(self, old: str, new: str) -> bool:
        """Give the records of zone ``old`` the name ``new`` (a reload renamed the zone:
        the same endpoints under a new name; they were never replayed under it, review).
        Runs in the writer thread (``ReplayWriter.call``), after every record submitted
        before. False when ``old`` has no records' id, or ``new`` has one already (the
        two logs then stay apart)."""
        zid = self._ids.get(old)
        if zid is None or new in self._ids:
            return False
        packed = K.ZONE_ID.pack(zid)

        def rename(w: WriteTxn) -> None:
            w.txn.delete(K.encode_name(old), db=self._zones_db)
            w.txn.put(K.encode_name(new), packed, db=self._zones_db)
            w.txn.put(packed, K.encode_name(new), db=self._zone_names_db)

        self._write(rename)
        self._ids[new] = zid
        self._names[zid] = new
        counters = self._zones.get(zid)
        if counters is not None:
            counters.name = new
        del self._ids[old]
        return True

    # -- the mirror --------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Stored key + value bytes of the whole log (committed)."""
        return self._total_bytes

    @property
    def total_records(self) -> int:
        return self._total_records

    def zones_with_records(self) -> list[str]:
        """The zones that have committed records (the in-memory mirror, as
        ``zone_records``)."""
        return [state.name for state in list(self._zones.values()) if state.records]

    def zone_records(self, zone: str) -> int:
        """Committed records of ``zone`` (0 for a zone never written).

        Lock-free and cheap: it reads the in-memory mirror the writer publishes after each
        commit, so the event loop can ask it for every connecting endpoint.
        """
        zid = self._ids.get(zone)
        state = self._zones.get(zid) if zid is not None else None
        return state.records if state is not None else 0

    def _effective_cap(self) -> int:
        cap = self.max_bytes
        if self._soft_cap is not None and self._soft_cap < cap:
            cap = self._soft_cap
        if self._disk_cap is not None:
            if self._disk_has_room():
                self._disk_cap = None
                log.info("replay log %s: the disk has room again; the byte cap is %d",
                         self.path, cap)
            elif self._disk_cap < cap:
                cap = self._disk_cap
        return cap

    def _disk_has_room(self) -> bool:
        """Lifts the cap a full disk set (a quarter of the log evicted then): kept for
        good, one moment of a full disk left a log of a few KiB for the rest of the
        process, whatever was freed later (review)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= self._disk_room

    def _note_evicted(self, zone: str, count: int) -> None:
        self._evicted_total += count
        if zone not in self._warned_evicted:
            self._warned_evicted.add(zone)
            log.warning("replay log: evicted %d record(s) of zone %r, oldest first, to stay "
                        "within the byte cap (%d bytes); further evictions for this zone "
                        "are only counted (stats: evicted)", count, zone,
                        self._effective_cap())
