"""Confirmed log positions of the replay log (``log::SetLogPosition``), per endpoint.

``PositionOps`` (on ``state.StateBase``) keeps, per endpoint name, the ``ts`` up to
which the endpoint has everything, in the ``positions`` sub-database. Positions only
move forward; one too far in the future is clamped. ``retention`` reads them to prune.
"""

from __future__ import annotations

import logging
import math
import time

import lmdb

from . import keys as K
from .state import StateBase, WriteTxn

log = logging.getLogger("router.replaylog")

#: A confirmed position more than this far ahead of the reference time is clamped.
FUTURE_SLACK = 86400.0


class PositionOps(StateBase):
    """Confirmed positions (layer 3 of the store, beside retention and reading)."""

    clamped_positions: int              # confirmed positions clamped from the future
    _warned_clamped: set[str]

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
            def write(w: WriteTxn) -> float:
                old = w.txn.get(raw_name, db=self._positions_db)
                current = K.POSITION.unpack(old)[0] if old else 0.0
                if ts > current:
                    w.txn.put(raw_name, K.POSITION.pack(ts), db=self._positions_db)
                    return ts
                return current
            return self._write(write)

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
