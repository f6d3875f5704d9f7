"""Retention of the replay log: Icinga's prune rule, the byte cap, eviction.

``RetentionOps`` (on ``state.StateBase``) deletes records, always at the head of a zone
so the live records of a zone stay a contiguous seq range: ``prune`` applies Icinga's
log cleanup per endpoint, ``enforce_cap`` and ``_evict`` keep the log within its byte
cap (fair shares: only zones over their equal share of the cap lose records, oldest
first among them; a zone within its share loses none), and ``_make_room`` / ``_evict_and_tick`` free space
when the map is full at its maximum or the disk is full (used by ``append``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import lmdb

from . import keys as K
from .env import GiB
from .state import StateBase, WriteTxn

log = logging.getLogger("router.replaylog")

DEFAULT_MAX_BYTES = 1 * GiB
#: Icinga's default ``log_duration`` for an endpoint (1 day).
DEFAULT_LOG_DURATION = 86400.0


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


class RetentionOps(StateBase):
    """Pruning and eviction (layer 3 of the store)."""

    _emergency_used: bool               # the map was grown past its maximum once

    # -- retention -----------------------------------------------------------------------

    def enforce_cap(self, max_bytes: int | None = None) -> dict[str, int]:
        """Evict until the log is within its byte cap (fair shares, see ``_evict``).

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

    def _prune(self, w: WriteTxn, now: float, zones_endpoints: Mapping[str, Sequence[str]],
               log_duration: Mapping[str, float], default_duration: float) -> PruneStats:
        stats = PruneStats()
        txn = w.txn
        cur = txn.cursor(db=self._records_db)
        unpack_header = K.HEADER.unpack_from
        freed = 0
        for zone, endpoints in zones_endpoints.items():
            zid = self._ids.get(zone)
            if zid is None:
                continue
            z = self._zones.get(zid)
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
                for kind, number in count.items():
                    if number:
                        getattr(stats, kind)[zone] = number
        if freed:
            log.debug("replay log: pruned %d record(s), %d bytes", stats.total, freed)
        return PruneStats(stats.confirmed, stats.expired, stats.disabled, freed)
    # -- eviction ------------------------------------------------------------------------

    def _evict(self, w: WriteTxn, target: int) -> dict[str, int]:
        """Delete records until ``w.total_bytes <= target``, fairly between zones.

        Every zone holding records has an equal share of ``target``. Only zones over their
        share lose records: among them the oldest record goes first (so with every zone
        over its share this is plain oldest-first), and a zone stops losing records once
        it is down to its share. One flooding zone (say a child whose parent is away)
        thus evicts its own backlog, never the few queued messages of a quiet zone within
        its share. Since the zones together hold more than ``target``, at least one of
        them is over its share whenever this deletes anything.
        """
        cur = w.txn.cursor(db=self._records_db)
        unpack_header = K.HEADER.unpack_from
        evicted: dict[str, int] = {}
        while w.total_bytes > target:
            live = w.live_zones()
            if not live:
                break
            share = target // len(live)
            heads: list[tuple[float, int, str]] = []
            for zc in live:
                if zc.bytes > share and cur.set_range(K.record_key(zc.id, 0)):
                    if K.split_key(cur.key())[0] == zc.id:
                        heads.append((unpack_header(cur.value())[0], zc.id, zc.name))
            if not heads:
                break
            heads.sort()
            _, zid, name = heads[0]
            # Delete this zone's run while it stays older than the next candidate's head.
            limit = heads[1][0] if len(heads) > 1 else math.inf
            z = w.zone(zid, name)
            cur.set_range(K.record_key(zid, 0))
            count = nbytes = 0
            while True:
                nbytes += K.KEY_SIZE + len(cur.value())
                count += 1
                cur.delete()
                if w.total_bytes - nbytes <= target or z.bytes - nbytes <= share:
                    break
                key = cur.key()
                if not key or K.split_key(key)[0] != zid:
                    break
                if unpack_header(cur.value())[0] > limit:
                    break
            z.removed(count, nbytes)
            z.evicted += count
            w.total_records -= count
            w.total_bytes -= nbytes
            evicted[name] = evicted.get(name, 0) + count
        for zone_name, count in evicted.items():
            w.evicted[zone_name] = w.evicted.get(zone_name, 0) + count
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
