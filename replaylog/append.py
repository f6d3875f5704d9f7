"""Appending to the replay log: one transaction per batch, and what to do when it is full.

``AppendOps`` (on ``retention.RetentionOps``) is the hot write path. ``append_many``
files a batch of records under their target zones in one write transaction (with
``putmulti(append=True)`` where the keys sort last) and enforces the byte cap in the
same transaction (``_append`` fills that transaction); ``_append_retrying`` turns a full
map into growth, eviction, splitting or a counted drop, and a full disk into one
eviction and retry, then ``ReplayLogDiskFull``.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import lmdb

from . import keys as K
from .lmdbfile import CORRUPTION, describe
from .errors import ReplayLogCorrupt, ReplayLogDiskFull, ReplayLogError
from .retention import RetentionOps
from .state import WriteTxn

log = logging.getLogger("router.replaylog")

#: Below this much free space an EIO from a commit is taken for a full disk (see below).
FULL_DISK_SLACK = 16 << 20
#: A full disk is logged at most once per this many seconds (every one is counted).
DISK_FULL_LOG_INTERVAL = 60.0
#: Free bytes on the disk, at least, before the cap a full disk lowered is lifted.
DISK_ROOM_MIN = 1 << 20


def is_disk_full(path: Path, error: lmdb.Error) -> bool:
    """Whether a failed write means the file system is full.

    ``ENOSPC`` is ``lmdb.DiskError``. But LMDB reports a *short* write as ``EIO``
    (``mdb_page_flush``), and a short write is what a file system that fills up in the
    middle of a commit gives: without this, a full disk looked like an I/O error, nothing
    was evicted and every later record was lost (found by tests/test_storage_faults.py
    on a 2 MiB tmpfs). An EIO with almost no free space left is taken for a full disk.
    """
    if isinstance(error, lmdb.DiskError):
        return True
    if os.strerror(errno.EIO) not in str(error):
        return False
    try:
        fs = os.statvfs(path)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < FULL_DISK_SLACK


class AppendOps(RetentionOps):
    """The append path (layer 4 of the store)."""

    map_full: int                       # MapFullError seen on a write
    dropped: int                        # records that fit in no map at all
    disk_full: int                      # ENOSPC seen on a write
    _next_disk_full_log = 0.0           # monotonic time of the next "disk full" line

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
            except CORRUPTION as e:
                raise ReplayLogCorrupt(self.path, describe(e)) from e
            except lmdb.Error as e:
                if not is_disk_full(self.path, e):
                    raise ReplayLogError(f"replay log {self.path}: {describe(e)}") from e
                self.disk_full += 1
                now = time.monotonic()
                if now >= self._next_disk_full_log:
                    self._next_disk_full_log = now + DISK_FULL_LOG_INTERVAL
                    log.error("replay log %s: disk full (%s); evicting the oldest records "
                              "(counted in stats disk_full and evicted; this line at most "
                              "once per %.0f s)", self.path, e, DISK_FULL_LOG_INTERVAL)
                if disk_retry and self._total_records:
                    # Pages freed now are reused by later commits instead of growing the
                    # file: evict a quarter of the log, then try once more.
                    disk_retry = False
                    target = self._total_bytes * 3 // 4
                    self._disk_cap = target
                    # Lifted once the disk holds twice what this eviction frees again.
                    self._disk_room = max(DISK_ROOM_MIN, 2 * (self._total_bytes - target))
                    if self._evict_on_full_disk(target, e):
                        continue
                raise ReplayLogDiskFull(f"replay log {self.path}: disk full, "
                                        f"{len(records)} record(s) not stored") from e

    def _evict_on_full_disk(self, target: int, cause: lmdb.Error) -> bool:
        """Evict down to ``target`` on a full disk; False when even that cannot commit.

        Deleting copies pages too, so on a disk without a free block (before any earlier
        eviction left free pages inside the file) the delete fails like the append did:
        then the disk reserve is given up for it, once per start.
        """
        while True:
            try:
                self._evict_and_tick(target)
                return True
            except lmdb.Error as evict_error:
                if not (isinstance(evict_error, lmdb.MapFullError)
                        or is_disk_full(self.path, evict_error)):
                    raise ReplayLogError(f"replay log {self.path}: "
                                         f"{describe(evict_error)}") from cause
                if not self._release_disk_reserve():
                    return False

    def _append(self, w: WriteTxn, records: Sequence[tuple[str, float, bytes, str | None]]
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
            ozid: int | None
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
