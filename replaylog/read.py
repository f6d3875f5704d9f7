"""Reading the replay log: chunks of a zone's records in short read transactions.

``ReadOps`` (on ``state.StateBase``) is the hot read path, safe from any thread:
``read_batch`` reads one chunk (``READ_CHUNK`` records, at most ``READ_CHUNK_BYTES``)
in its own read transaction, seeking by seq or, while a zone's ``ts`` is monotonic, by
binary search on ``ts``; ``iter_from`` chains chunks into a live iteration.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import lmdb

from . import keys as K
from .env import MiB
from .errors import ReplayLogCorrupt
from .state import StateBase

#: Records per read transaction in ``iter_from``.
READ_CHUNK = 1024
#: ... and at most this many frame bytes (a chunk always holds at least one record).
READ_CHUNK_BYTES = 4 * MiB


class Record(NamedTuple):
    """One stored message, as ``iter_from`` yields it."""

    seq: int                  #: position in its zone, strictly increasing
    ts: float                 #: the ``ts`` of the message (Icinga's log ``timestamp``)
    frame: bytes              #: the netstring frame, ready to send as is
    object_zone: str | None   #: zone of the object; None = any peer may receive it


class ReadOps(StateBase):
    """The read path (layer 3 of the store, beside retention and positions)."""

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
            zid = self._zone_id(txn, raw_zone)
            if zid is None:
                return []
            cur = txn.cursor(db=self._records_db)
            start: int | None
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

    def zone_disordered(self, zone: str) -> bool:
        """Has ``ts`` gone backwards among the records ``zone`` holds (frames of two
        connections drained one after the other, a clock step)? Lock-free: the mirror of
        the last commit, like ``zone_records``."""
        zid = self._ids.get(zone)
        state = self._zones.get(zid) if zid is not None else None
        return state is not None and bool(state.flags & K.FLAG_DISORDER)

    def ts_order(self, zone: str, after_ts: float = -math.inf, *,
                 chunk: int = 65536) -> list[int]:
        """The seqs of ``zone``'s records with ``ts > after_ts``, in ``(ts, seq)`` order.

        Why: a receiver drops a message older than the newest it had on the connection
        (Icinga's rule), so a replay in seq order of a zone whose ``ts`` went backwards
        lost the older messages. Reads keys and record headers only, ``chunk`` records
        per read transaction; holds two arrays and the sorted list, about 40 bytes a
        record, while it sorts."""
        raw_zone = K.encode_name(zone)
        stamps: array[float] = array("d")
        seqs: array[int] = array("Q")

        def read(start: int) -> int | None:
            """One chunk from seq ``start``; the seq to go on from, or None at the end."""
            def in_txn(txn: lmdb.Transaction) -> int | None:
                zid = self._zone_id(txn, raw_zone)
                if zid is None:
                    return None
                cur = txn.cursor(db=self._records_db)
                if not cur.set_range(K.record_key(zid, start)):
                    return None
                n = 0
                last = 0
                for key, value in cur:
                    kzid, seq = K.split_key(key)
                    if kzid != zid:
                        break
                    last = seq
                    n += 1
                    ts = K.HEADER.unpack_from(value)[0]
                    if ts > after_ts:
                        stamps.append(ts)
                        seqs.append(seq)
                    if n >= chunk:
                        return int(last) + 1
                return None
            return self._read(in_txn)

        start: int | None = 0
        while start is not None:
            start = read(start)
        order = sorted(range(len(seqs)), key=stamps.__getitem__)   # stable: seq breaks ties
        return [seqs[i] for i in order]

    def read_seqs(self, zone: str, seqs: Sequence[int]) -> list[Record]:
        """The records of ``zone`` with these seqs, in the order given, in one read
        transaction; a seq pruned or evicted meanwhile is skipped."""
        raw_zone = K.encode_name(zone)

        def read(txn: lmdb.Transaction) -> list[Record]:
            zid = self._zone_id(txn, raw_zone)
            if zid is None:
                return []
            out: list[Record] = []
            for seq in seqs:
                value = txn.get(K.record_key(zid, seq), db=self._records_db)
                if value is None:
                    continue
                ts, ozid = K.HEADER.unpack_from(value)
                object_zone = None
                if ozid != K.NO_ZONE:
                    object_zone = self._names.get(ozid) or self._zone_name(txn, ozid)
                out.append(Record(seq, ts, bytes(value[K.HEADER_SIZE:]), object_zone))
            return out
        return self._read(read)

    def _zone_id(self, txn: lmdb.Transaction, raw_zone: bytes) -> int | None:
        packed = txn.get(raw_zone, db=self._zones_db)
        return None if packed is None else int(K.ZONE_ID.unpack(packed)[0])

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
        lo: int
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
