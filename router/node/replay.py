"""Store-and-forward for peers that are away: the node's side of the replay log.

What is kept: a message Icinga marks as logged (routing's ``decision.logged``: check
results, next-check updates, acknowledgements, notifications, executions, deletions) whose
target zone had nobody connected (``decision.unreachable``) is appended, as the exact frame
we would have sent, to that zone's log (``replaylog``). Frames still waiting in a peer's
send queue when its connection drops are kept the same way, so a disconnect loses nothing
that Icinga would have logged.

Replay: when an endpoint of a zone with a log comes back, its session starts in the
*replaying* state. It is registered (duplicates are refused, its own messages are routed)
but it is not yet in the routing table's connected set, so new messages for its zone keep
going to the log, **behind** the backlog, instead of overtaking it. Receivers drop any
message whose ``ts`` is older than the last one they saw, so overtaking would lose the
backlog. The replay task streams the log from the endpoint's confirmed position in chunks
read off the event loop, and it waits whenever the peer's send queue is congested, so
other peers' traffic keeps flowing. When the read finds nothing new and every submitted
record is committed, the endpoint joins the connected set in the same loop step, so no
message can slip between the log and the live path. Icinga drops live messages for a
peer while it replays; we do not.

In flight: a logged frame written to a peer is not safe until the peer confirms it.
Each connection to a zone with a log keeps the written, unconfirmed frames in memory
(``sendqueue.Ledger``, 32 MiB at most); a confirmation drops what it covers, and when the
connection is lost the rest is appended to the log before the unsent queue. The peer's
next session replays from its confirmed position: receivers ignore a message older than
the newest ``ts`` they processed (Icinga's rule), so only the message at exactly that
position can be processed twice, as with Icinga's own replay. Nothing written is lost
unless more than 32 MiB stays unconfirmed (``router_unconfirmed_overflow_total``).

Positions: a peer's ``log::SetLogPosition`` (the newest ``ts`` it received from us) is
persisted and bounds the next replay, once ``receipt_position`` has told a receipt from
the marker Icinga sends while it replays its own log; records every eligible endpoint has
confirmed, or older than its ``log_duration``, are pruned every ``PRUNE_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from replaylog import ReceivedPositions, ReplayLogCorrupt, ReplayWriter
from router.node.context import NodeContext
from router.routing import METHODS

if TYPE_CHECKING:  # pragma: no cover
    from router.node.receipts import Receipts
    from router.node.stats import Connection

log = logging.getLogger("router.replay")

PRUNE_INTERVAL = 10.0
#: Frames per replay chunk handed to the send queue.
CHUNK = 1024
#: Directory of the processed positions, beside the replay log's.
RECEIVED_DIR = "received"
#: Label for replayed frames in the per-method sent counters.
REPLAY_METHOD = "(replay)"


class ReplayHost(NodeContext, Protocol):
    """What the replay log needs from the node."""

    @property
    def connections(self) -> Mapping[str, Connection]: ...

    @property
    def receipts(self) -> Receipts: ...

    def replay_done(self, conn: Connection, count: int, seconds: float) -> None:
        """The replay of ``conn`` caught up with the log: it goes live."""

    def wait_drained(self, conn: Connection) -> asyncio.Future[None]:
        """Resolved when ``conn``'s send queue is below low water again (or it closed)."""


#: The endpoint a zone that left the configuration is pruned for: no position, the
#: default log_duration (no endpoint name starts with a NUL).
STALE_ZONE = "\x00stale-zone"


class ReplayManager:
    """Persists logged messages for unreachable zones and replays them on reconnect."""

    def __init__(self, node: ReplayHost, writer: ReplayWriter) -> None:
        self.node = node
        self.writer = writer
        self.store = writer.store
        topology = node.topology
        durations = node.config.endpoint_log_duration
        #: Zones we keep a log for: adjacent zones with an endpoint whose log_duration != 0.
        self.zones: dict[str, tuple[str, ...]] = {}
        for zone in (topology.local_zone, topology.parent_zone, *topology.child_zones):
            if zone is None:
                continue
            spec = topology.zone(zone)
            endpoints = tuple(e for e in spec.endpoints if e != node.name) if spec else ()
            if any(durations.get(e, 86400.0) != 0 for e in endpoints):
                self.zones[zone] = endpoints
        self.persisted = 0
        #: Replays stopped by a damaged page in the log (router_replay_read_failures_total).
        self.corrupt_reads = 0
        self.replayed: dict[str, int] = {}
        self.replaying: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: new zone name -> the rename of its records under way (``rename_zone``)
        self._renames: dict[str, concurrent.futures.Future[Any]] = {}
        self._next_prune = 0.0
        #: What this node processed per origin (router.node.receipts), beside the log.
        self.received = ReceivedPositions(self.store.path.parent / RECEIVED_DIR)
        restored = node.receipts.attach(writer, self.received)
        if restored:
            log.info("restored the processed positions of %d endpoints from %s", restored,
                     self.received.path)

    # ------------------------------------------------------------------ writing

    def persist(self, zones: tuple[str, ...], ts: float, frame: bytes,
                object_zone: str | None) -> None:
        """Append ``frame`` to the log of every zone in ``zones`` that keeps one."""
        for zone in zones:
            if zone in self.zones and self.writer.submit(zone, ts, frame, object_zone):
                self.persisted += 1

    def persist_unsent(self, conn: Connection, leftovers: list[tuple[bytes, str]]) -> int:
        """Keep the logged frames a dropped connection never sent; returns how many."""
        zone = self.node.topology.zone_of(conn.endpoint or "")
        if zone not in self.zones:
            return 0
        kept = 0
        for frame, method in leftovers:
            spec = METHODS.get(method)
            if spec is None or not spec.logged:
                continue
            ts = _frame_ts(frame)
            if ts is not None and self.writer.submit(zone, ts, frame, None):
                kept += 1
        self.persisted += kept
        return kept

    def persist_written(self, conn: Connection,
                        items: list[tuple[float, bytes, str]]) -> int:
        """Keep logged frames that were written to a dropped connection but never
        confirmed (its ledger, with their stamps); returns how many."""
        zone = self.node.topology.zone_of(conn.endpoint or "")
        if zone not in self.zones:
            return 0
        kept = sum(1 for ts, frame, _ in items if self.writer.submit(zone, ts, frame, None))
        if items:
            log.debug("[%s] keeping %d written, unconfirmed frames with ts %.6f..%.6f",
                      conn.endpoint, len(items), items[0][0], items[-1][0])
        self.persisted += kept
        return kept

    def rename_zone(self, old: str, new: str) -> None:
        """A reload renamed zone ``old`` to ``new`` (the same endpoints): its records are
        replayed under the new name (in the writer thread, after what was logged for
        the old name before; the sessions a reload closes are logged first)."""
        def done(future: Any) -> None:
            try:
                renamed = future.result()
            except Exception as exc:  # noqa: BLE001 - the log stays under the old name
                log.error("replay log: cannot rename zone %s to %s: %s; its records stay "
                          "under the old name", old, new, exc)
                return
            if renamed:
                log.info("replay log: zone %s renamed to %s (its records follow)", old, new)

        future = self.writer.call_between(self.store.rename_zone, old, new)
        future.add_done_callback(done)
        self._renames[new] = future

    def keeps_log(self, endpoint: str) -> bool:
        """Does the zone of ``endpoint`` keep a replay log (its log_duration is not 0)?"""
        return self.node.topology.zone_of(endpoint) in self.zones

    def confirm(self, endpoint: str, position: float) -> None:
        self.writer.confirm(endpoint, position, now=time.time())

    def wants_replay(self, endpoint: str) -> bool:
        """Does ``endpoint`` start its session replaying?

        Not when its zone keeps no log, and not when the log has no record for the zone and
        no record is on its way to the file: then nothing can be replayed and the endpoint
        is live at once, without a replay task and two thread hops (5 000 agents
        reconnecting after a restart would pay those for nothing). The writer publishes a
        commit's counters before it counts the records as committed, so with nothing
        of the zone pending ``zone_records`` is exact.
        """
        zone = self.node.topology.zone_of(endpoint)
        if zone not in self.zones:
            return False
        renaming = self._renames.get(zone)
        if renaming is not None:
            if not renaming.done():
                return True                 # its records get their new name meanwhile
            del self._renames[zone]
        return bool(self.writer.pending_in(zone)) or self.store.zone_records(zone) > 0

    # ------------------------------------------------------------------ replay

    def start(self, conn: Connection) -> None:
        task = self.node.loop.create_task(self._replay(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replay(self, conn: Connection) -> None:
        node = self.node
        loop = node.loop
        endpoint = conn.endpoint or ""
        zone = node.topology.zone_of(endpoint) or ""
        store = self.store
        started = time.monotonic()
        count = 0
        self.replaying[endpoint] = 0
        try:
            renaming = self._renames.get(zone)
            if renaming is not None:
                await asyncio.wrap_future(renaming)     # a reload renamed the zone
            position = await loop.run_in_executor(None, store.position, endpoint)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("[%s] replay of zone %s starts after position %.6f (%d records "
                          "in the zone, %d pending)", endpoint, zone, position,
                          store.zone_records(zone), self.writer.pending)
            after_seq = 0
            if self.writer.pending_in(zone):
                # zone_disordered sees committed records only: frames of two dropped
                # connections still on their way to the file were replayed in seq order,
                # newest first, and the receiver dropped the older ones (review).
                await loop.run_in_executor(None, self.writer.flush, 5.0)
                if not self._current(conn):
                    return
            if store.zone_disordered(zone):
                sorted_part = await self._replay_in_ts_order(conn, zone, position)
                if sorted_part is None:
                    return
                after_seq, count = sorted_part
            while self._current(conn):
                batch = await loop.run_in_executor(None, functools.partial(
                    store.read_batch, zone, position, after_seq=after_seq, limit=CHUNK))
                if not self._current(conn):
                    return
                if not batch:
                    if self.writer.pending_in(zone):
                        await loop.run_in_executor(None, self.writer.flush, 5.0)
                        continue
                    # Nothing of the zone pending (records of it are submitted from this
                    # loop only): one last read in this loop step, then go live.
                    batch = store.read_batch(zone, position, after_seq=after_seq, limit=CHUNK)
                    if not batch:
                        node.replay_done(conn, count, time.monotonic() - started)
                        return
                queue = conn.queue
                assert queue is not None
                for record in batch:
                    queue.put(record.frame, REPLAY_METHOD)
                log.debug("[%s] replaying %d records, seq %d..%d, ts %.6f..%.6f", endpoint,
                          len(batch), batch[0].seq, batch[-1].seq, batch[0].ts, batch[-1].ts)
                after_seq = batch[-1].seq
                count += len(batch)
                self.replaying[endpoint] = count
                conn.schedule_flush()
                while queue.congested and self._current(conn):
                    await node.wait_drained(conn)
        except ReplayLogCorrupt as exc:
            # A damaged page found while reading (the open checks only the ends): closing
            # the session would bring the peer back to the same page forever, with no
            # live traffic meanwhile. It gets live traffic; the unreadable rest stays in
            # the file for the operator (the message names the recovery command).
            self.corrupt_reads += 1
            log.error("[%s] replay stopped after %d messages: %s; the endpoint gets live "
                      "traffic from now on, the rest of its backlog stays in the file",
                      endpoint, count, exc)
            if self._current(conn):
                node.replay_done(conn, count, time.monotonic() - started)
        except Exception:  # the replay of one peer must not take the node down
            log.exception("[%s] replay failed after %d messages; closing the session",
                          endpoint, count)
            conn.close("replay failed")
        finally:
            self.replaying.pop(endpoint, None)
            self.replayed[endpoint] = self.replayed.get(endpoint, 0) + count

    async def _replay_in_ts_order(self, conn: Connection, zone: str, position: float
                                  ) -> tuple[int, int] | None:
        """Replay what ``zone``'s log holds after ``position`` in ``ts`` order, not seq
        order; (the last seq it covered, how many it sent), None if the session ended.

        Why: a zone's ``ts`` goes backwards in the log when the frames of two of its
        connections are drained one after the other (a satellite connected to both HA
        masters, which both drop: the second one's older frames come after the first
        one's newer). Sent in seq order, the receiver dropped the older messages as
        stale (it keeps the newest ``ts`` of the connection, as Icinga does), and both
        masters lost them for good (review). Records appended after the order was taken
        follow in seq order, as usual."""
        node = self.node
        loop = node.loop
        store = self.store
        endpoint = conn.endpoint or ""
        if self.writer.pending_in(zone):
            await loop.run_in_executor(None, self.writer.flush, 5.0)
        order = await loop.run_in_executor(None, store.ts_order, zone, position)
        if order:
            log.info("[%s] replaying %d records of zone %s in ts order (frames of its "
                     "connections were logged out of order)", endpoint, len(order), zone)
        count = 0
        for start in range(0, len(order), CHUNK):
            if not self._current(conn):
                return None
            batch = await loop.run_in_executor(None, store.read_seqs, zone,
                                               order[start:start + CHUNK])
            if not self._current(conn):
                return None
            queue = conn.queue
            assert queue is not None
            for record in batch:
                queue.put(record.frame, REPLAY_METHOD)
            count += len(batch)
            self.replaying[endpoint] = count
            conn.schedule_flush()
            while queue.congested and self._current(conn):
                await node.wait_drained(conn)
        if not self._current(conn):
            return None
        return (max(order) if order else 0), count

    def _current(self, conn: Connection) -> bool:
        return (conn.state == "open" and conn.endpoint is not None
                and self.node.connections.get(conn.endpoint) is conn)

    # ------------------------------------------------------------------ housekeeping

    def housekeeping(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_INTERVAL
        # Zones that keep no log any more were never pruned: their records stayed for
        # good, counted against the cap (review). One whose endpoints all have
        # log_duration 0 keeps nothing, as Icinga; one that left the configuration keeps
        # its records for the default log_duration (a reload with a typo loses nothing).
        zones: dict[str, tuple[str, ...]] = dict(self.zones)
        topology = self.node.topology
        for zone in self.store.zones_with_records():
            if zone not in zones:
                zones[zone] = () if topology.zone(zone) is not None else (STALE_ZONE,)
        self.writer.prune(time.time(), zones, dict(self.node.config.endpoint_log_duration))

    def stats(self) -> dict[str, Any]:
        return {"persisted": self.persisted, "replayed": dict(self.replayed),
                "replaying": dict(self.replaying), "writer": self.writer.stats(),
                "store": self.store.stats()}

    async def close(self, timeout: float) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.node.receipts.close()
        await self.node.loop.run_in_executor(None, self.writer.close, timeout)
        self.received.close()


def receipt_position(value: object, newest: float) -> float | None:
    """The position a ``log::SetLogPosition`` confirms, or None when it confirms nothing.

    Icinga sends the message for two reasons. Every 5 s it confirms the newest ``ts`` it
    processed from us: one of our own stamps, which are never whole numbers
    (``Node.stamp``). But while it replays its own log to us after a connect it also
    sends the *name of the log file* it is replaying (``ApiListener::ReplayLog``): a
    whole number of seconds, for the live file one second in the future. Taken as a
    receipt, that marker confirmed every frame we had written, so frames cut off by a
    reset at the same moment were neither kept nor replayed, and the peer never got
    them (issue 21: 5 of 24 results lost towards a real master). A whole number, or a
    position newer than ``newest`` (the latest of our last stamp and now: after a
    restart we replay the last run's stamps before making new ones), is therefore not a
    receipt; ignoring a real one costs at most a replay of what the peer already has,
    which it drops by ``ts``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    position = float(value)
    if not math.isfinite(position) or position.is_integer() or position > newest:
        return None
    return position


def _frame_ts(frame: bytes) -> float | None:
    """The ``ts`` of a netstring frame we encoded (only used when a connection drops)."""
    try:
        start = frame.index(b":") + 1
        data = orjson.loads(frame[start:-1])
    except (ValueError, orjson.JSONDecodeError):
        return None
    ts = data.get("ts") if isinstance(data, dict) else None
    return float(ts) if isinstance(ts, (int, float)) else None
