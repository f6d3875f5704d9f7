"""Exactly-once between our nodes: what this node has processed, per origin, on disk.

Icinga's replay contract is at-least-once: a sender keeps logged messages until the
receiver confirms them (``log::SetLogPosition``), and after a reconnect it sends again
everything newer than the confirmed position. The receiver only keeps the newest ``ts``
of the current connection in memory, so after its own restart, or after a relay in
between restarted, a message it already handed on comes again and is processed twice
(issue 21: 10 000 results at the master for 5 000 sent after a ``kill -9`` of the
satellite). Three rules make it exactly-once between our nodes:

1. **Dedup by origin.** A message carries the identity of the node where it entered our
   chain: ``routerOrigin: [endpoint, ts]``, set by the first of our nodes that relays it
   (the sending endpoint and the ``ts`` it sent) and passed on unchanged by the next
   ones; Icinga ignores the key and keeps it when it relays. A receiver drops a message
   whose origin ``ts`` is not newer than the newest it processed from that origin and
   that came by the same peer (``router_replay_duplicates_dropped_total{peer}``, by the
   peer that sent it). A relay that restarts stamps a message again with a new ``ts``
   when the agent replays it, but the origin stays the same, so the next hop still
   recognises it. Messages of one origin that come by *different* peers (an HA partner
   relays what the satellite sent it; the satellite fails over between the masters) are
   not ordered with each other: an older one from another peer is dropped only when it
   is among the last ``RECENT`` origin stamps processed (``Receipts.accept``). An origin
   is only believed from a peer that may speak for it (the origin's zone is the peer's
   or below it, or the peer is our parent or HA partner); otherwise the peer itself is
   the origin, so a child cannot silence another child.

2. **Processed means safe.** The positions this node confirms to a peer and keeps on
   disk only cover messages that can no longer be lost here: handed to local features,
   or, for what it relayed, committed to its own replay log or confirmed by every next
   hop that keeps a log. A checkpoint (every ``CHECKPOINT_INTERVAL``) takes the newest
   ``ts`` per origin and per peer and waits until every connection with unconfirmed
   logged frames has confirmed what it had at that moment (or dropped: its frames then
   went to the replay log); while it waits for one connection only, that peer's own
   position is confirmed already (``_save_part``: two of our nodes with frames
   unconfirmed at each other wait for each other otherwise). The replay log's writer
   commits the positions after
   every record submitted before (``ReplayWriter.call``), so they never cover a message
   that is not yet in the log. Only then are they confirmed to the peers. (A next hop
   that never confirms holds the checkpoints back until its connection drops; Icinga
   and our nodes confirm every 5 s.) Handed to a feature that keeps results on disk
   itself (the writers' queue, ``FeatureBarrier``) means committed there: a checkpoint
   also waits until that feature has committed everything it was handed before it.

3. **Restored at start.** The positions on disk (``replaylog.ReceivedPositions``, beside
   the replay log) are loaded before any connection is accepted: a peer's replay of what
   was processed before a ``kill -9`` is dropped. The recent origin stamps a checkpoint
   covers are saved with it, so rule 1 holds across the restart: which peer brought an
   origin's newest message, and whether an older one by another peer was processed
   already. (An origin none of whose stamps is among them keeps its position as a
   floor: anything older is taken for a replay, whichever peer brings it.)

What a ``kill -9`` of a node can still do: messages it processed after its last
checkpoint reached its (in-memory) features and may reach the restarted process's
features again; a relay loses nothing and doubles nothing. Towards Icinga 2 peers the
rules are Icinga's (at-least-once): they send no ``routerOrigin`` of their own, so the
origin is the peer and its ``ts``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from router.node.context import NodeContext
from router.routing import Relation

if TYPE_CHECKING:  # pragma: no cover
    from replaylog import ReceivedPositions, ReplayWriter
    from router.node.stats import Connection, EndpointStats

log = logging.getLogger("router.receipts")

#: Seconds between two checkpoints of the processed positions.
CHECKPOINT_INTERVAL = 0.25
#: Checkpoints waiting for confirmations at most; older ones are superseded.
MAX_PENDING = 64
#: Top-level key naming where a message entered our chain of nodes.
ORIGIN_KEY = "routerOrigin"
#: Relayed messages whose origin stamps are kept to recognise one that comes again by
#: another path: about 110 bytes each, 5.5 MB when full (reached after that many
#: relayed messages, flat from then on); at 5 000 results/s, the last 10 s.
RECENT = 50_000
#: Cached trust decisions (hop, origin) at most; the cache is cleared when full.
MAX_TRUST_CACHE = 65536
#: A checkpoint not saved after this many seconds is logged with what it waits for,
#: then every ``STUCK_REPEAT`` seconds while it still waits.
STUCK_AFTER = 30.0
STUCK_REPEAT = 60.0
#: Seconds added to our own last stamp on disk at start: it is saved every checkpoint
#: interval while it moves, so a stamp made before a crash is at most about an interval
#: newer (the wall clock moving forward meanwhile), unless saves failed or stalled.
OWN_STAMP_MARGIN = 1.0
#: Hop positions are saved beside the origins' under this prefix (no endpoint name starts
#: with a NUL): a position we confirm to a peer is on disk before the peer can hear it.
HOP_KEY_PREFIX = "\x00hop:"

#: An origin stamp as checkpoints save it: (origin, its ``ts``, the peer that brought it).
Stamp = tuple[str, float, str]


class FeatureBarrier(Protocol):
    """A feature that commits what it is handed later, off the loop (the writers' feed):
    a checkpoint covers a message only once the feature has committed it."""

    def mark(self) -> int:
        """A mark for everything handed over so far."""

    def reached(self, mark: int) -> bool:
        """Is everything handed over before ``mark`` committed?"""


class ReceiptsHost(NodeContext, Protocol):
    """What the receipts need from the node."""

    def feature_barrier(self) -> FeatureBarrier | None:
        """The feature a checkpoint must wait for, if any."""

    @property
    def last_stamp(self) -> float:
        """The newest ``ts`` this node stamped on a message."""

    def stamp_above(self, ts: float) -> None:
        """Stamp every later message above ``ts`` (at start: see ``attach``)."""

    @property
    def connections(self) -> Mapping[str, Connection]: ...

    def endpoint_stats(self, name: str) -> EndpointStats: ...


@dataclass(slots=True)
class _Checkpoint:
    number: int
    origins: dict[str, float]
    hops: dict[str, float]
    #: The origin stamps remembered since the checkpoint before: (origin, ts, hop), in
    #: the order they were processed.
    recent: list[Stamp] = field(default_factory=list)
    #: connection -> the stamp it must confirm (its unconfirmed frames at the checkpoint)
    waiting: dict[Connection, float] = field(default_factory=dict)
    #: The feature that must commit what it was handed before the checkpoint, and its mark.
    barrier: FeatureBarrier | None = None
    mark: int = 0
    #: Loop time it was taken (of the oldest one merged into it).
    taken_at: float = 0.0


class Receipts:
    """Per origin, the newest ``ts`` processed; checkpoints of it on disk (module doc)."""

    def __init__(self, host: ReceiptsHost) -> None:
        self.host = host
        #: origin endpoint -> newest origin ``ts`` processed (in memory, the hot path).
        self.seen: dict[str, float] = {}
        #: Origins and peers whose position moved since the last checkpoint (the hot
        #: path writes them beside ``seen`` and ``remote_log_position``): a checkpoint
        #: every 250 ms that scanned every origin and every connection took 4-25 ms of
        #: the loop at 10 000 agents, the p99 of paced results (issue 22).
        self.moved_origins: dict[str, float] = {}
        self.moved_hops: dict[str, float] = {}
        #: origin endpoint -> the peer that brought its newest message (relayed ones).
        self.seen_hop: dict[str, str] = {}
        #: (origin, ts) of the last RECENT relayed messages processed.
        self._recent: set[tuple[str, float]] = set()
        self._recent_order: deque[tuple[str, float]] = deque()
        #: The stamps remembered since the last checkpoint, (origin, ts, hop) in order: a
        #: checkpoint saves them (a part, its peer's), so that rule 1 survives a restart.
        self.moved_recent: list[Stamp] = []
        #: peer endpoint -> the position we may confirm to it (safe, see rule 2).
        self.confirmable: dict[str, float] = {}
        self.writer: ReplayWriter | None = None
        self.store: ReceivedPositions | None = None
        self._trust: dict[tuple[str, str], bool] = {}
        #: The zone tree the trust decisions were made in (cleared when it changes).
        self._trust_topology: object = None
        self._pending: list[_Checkpoint] = []
        #: The positions restored at start: what they cover counts as processed,
        #: whichever hop brings it (``accept``).
        self._floor: dict[str, float] = {}
        self._saved: dict[str, float] = {}
        self._saving = False
        self._timer: asyncio.TimerHandle | None = None
        #: Checkpoints taken; the number of the newest one on disk.
        self.checkpoints = 0
        self.saved_through = 0
        self.saves = 0
        self.save_failures = 0
        self._stuck_logged_at: float | None = None
        #: Our own newest stamp: on disk, and in the save running (``_save``).
        self._stamp_saved = 0.0
        self._stamp_saving = 0.0
        #: Loop time of the oldest checkpoint whose positions are not on disk yet.
        self._unsaved_since: float | None = None

    # ------------------------------------------------------------------ set-up

    def attach(self, writer: ReplayWriter, store: ReceivedPositions) -> int:
        """Persist through ``writer`` into ``store``; restore what it holds. Called
        before any connection is accepted. Returns the number of positions restored."""
        self.writer = writer
        self.store = store
        restored = store.load()
        hops = {name[len(HOP_KEY_PREFIX):]: restored.pop(name)
                for name in [n for n in restored if n.startswith(HOP_KEY_PREFIX)]}
        own = restored.pop(self.host.name, None)
        if own is not None:
            # Our peers keep the newest stamp they saw from us and drop anything older
            # as a replay: after a restart with the clock behind (an NTP step, a VM
            # restored) our new messages would all be dropped, silently, until the
            # clock caught up. Stamps go on above the last one saved (a checkpoint
            # saves it, 4 a second), plus the interval it may have moved since.
            self.host.stamp_above(own + OWN_STAMP_MARGIN)
        self._saved = dict(restored)
        self._floor = dict(restored)
        for name, ts in restored.items():
            if ts > self.seen.get(name, 0.0):
                self.seen[name] = ts
            stats = self.host.endpoint_stats(name)
            if ts > stats.remote_log_position:
                stats.remote_log_position = ts
            if ts > self.confirmable.get(name, 0.0):
                self.confirmable[name] = ts
        self._restore_recent(store.load_recent())
        for name, ts in hops.items():
            # Everything that came through this connection up to ``ts`` was processed
            # (we confirmed it, or were about to): the peer, which may not have heard the
            # confirmation, sends it again from its older position, and the first gate
            # in Node.on_message must drop it, ``ts`` included (it drops ts < position).
            stats = self.host.endpoint_stats(name)
            gate = math.nextafter(ts, math.inf)
            if gate > stats.remote_log_position:
                stats.remote_log_position = gate
            if ts > self.confirmable.get(name, 0.0):
                self.confirmable[name] = ts
        return len(restored)

    def _restore_recent(self, saved: list[Stamp]) -> None:
        """Rule 1's state from the recent stamps on disk (oldest first; the last RECENT
        count): the set, and for each origin whose newest processed stamp is among them,
        the peer that brought it. Such an origin needs no floor: an older message by
        another peer is processed unless its stamp is in the set, as before the restart
        (a floor dropped it: lost here when the partner, cut off from us, had it alone)."""
        seen, seen_hop = self.seen, self.seen_hop
        recent, order = self._recent, self._recent_order
        for name, ts, hop in saved[-RECENT:]:
            key = (name, ts)
            if key not in recent:
                recent.add(key)
                order.append(key)
            if ts >= seen.get(name, 0.0):
                seen[name] = ts
                seen_hop[name] = hop
        while len(order) > RECENT:
            recent.discard(order.popleft())
        for name in seen_hop:
            self._floor.pop(name, None)

    def start(self) -> None:
        self._timer = self.host.loop.call_later(CHECKPOINT_INTERVAL, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ hot path

    def origin(self, hop: str, value: Any, ts: float) -> tuple[str, float]:
        """The origin of a message from ``hop`` (its ``routerOrigin`` when the hop may
        speak for it, else the hop and the message's ``ts``)."""
        if type(value) is list and len(value) == 2:
            name, origin_ts = value
            if type(name) is str and (type(origin_ts) is float or type(origin_ts) is int):
                if self._trust_topology is not self.host.topology:    # a reload
                    self._trust.clear()
                    self._trust_topology = self.host.topology
                trusted = self._trust.get((hop, name))
                if trusted is None:
                    trusted = self._trusts(hop, name)
                if trusted:
                    return name, float(origin_ts)
        return hop, ts

    def accept(self, hop: str, name: str, ts: float) -> bool:
        """Should a message that entered our chain at ``name`` with ``ts`` and came
        from ``hop`` be processed? Records it when so.

        Newer than anything processed from that origin: yes. Not newer, from the hop
        that brought the newest (or from any hop after a restart, when that is not
        known): no, a replay. Not newer but from another hop (an HA partner relays what
        the satellite sent to it, a zone's endpoints took turns): only when it is not
        among the ``RECENT`` origin stamps processed last, since the paths are not
        ordered with each other and a watermark alone would lose the older message.
        """
        seen = self.seen
        if ts > seen.get(name, 0.0):
            seen[name] = ts
            self.moved_origins[name] = ts
            self.seen_hop[name] = hop
            self._remember(name, ts, hop)
            return True
        if ts <= self._floor.get(name, 0.0):
            # Covered by the checkpoint restored at start. Without this, the first newer
            # message recorded its hop, and an older one brought by another hop then
            # passed as new: processed twice across a kill -9 (review).
            return False
        if self.seen_hop.get(name, hop) == hop:
            return False
        if (name, ts) in self._recent:
            return False
        self._remember(name, ts, hop)
        return True

    def paths_multiplied(self) -> None:
        """Our zone just got an HA partner (a reload): a peer's messages may now come by
        two paths. What came by the one path so far passed the watermark, which records
        no hop and no recent stamp, so the partner's relay of one of them would count
        as new (processed twice): it becomes a floor, as a restart's positions do
        (review)."""
        floor = self._floor
        for name, ts in self.seen.items():
            if name not in self.seen_hop and ts > floor.get(name, 0.0):
                floor[name] = ts

    def _remember(self, name: str, ts: float, hop: str) -> None:
        key = (name, ts)
        recent = self._recent
        recent.add(key)
        order = self._recent_order
        order.append(key)
        if len(order) > RECENT:
            recent.discard(order.popleft())
        if self.writer is not None:
            self.moved_recent.append((name, ts, hop))

    def _trusts(self, hop: str, name: str) -> bool:
        topology = self.host.topology
        hop_zone, origin_zone = topology.zone_of(hop), topology.zone_of(name)
        if hop_zone is None or origin_zone is None:
            trusted = False
        elif topology.relation(hop) in (Relation.PARENT, Relation.PEER):
            trusted = True
        else:
            trusted = origin_zone == hop_zone or topology.is_ancestor(hop_zone, origin_zone)
        if len(self._trust) >= MAX_TRUST_CACHE:
            self._trust.clear()
        self._trust[(hop, name)] = trusted
        if not trusted:
            self.host.ratelog.log((hop, "origin", name), logging.WARNING,
                                  "[%s] sent a message with origin %r, which it may not "
                                  "speak for; taking %s itself as the origin", hop,
                                  name[:200], hop)
        return trusted

    # ------------------------------------------------------------------ checkpoints

    def confirm_position(self, endpoint: str, received: float) -> float:
        """The position to confirm to ``endpoint`` (``received``: the newest ``ts`` from
        it) : the safe one when positions are persisted, else ``received``."""
        if self.writer is None:
            return received
        return self.confirmable.get(endpoint, 0.0)

    def _tick(self) -> None:
        try:
            self.checkpoint()
            self._check_stuck(self.host.loop.time())
        except Exception:  # the timer must keep running
            log.exception("receive positions: checkpoint failed")
        self._timer = self.host.loop.call_later(CHECKPOINT_INTERVAL, self._tick)

    def checkpoint(self) -> None:
        """Take a checkpoint when positions moved, and save the newest ready one."""
        host = self.host
        if self.writer is not None:
            saved = self._saved
            origins = {name: ts for name, ts in self.moved_origins.items()
                       if ts > saved.get(name, 0.0)}
            self.moved_origins = {}
            hops = {}
            later: dict[str, float] = {}
            connections, confirmable = host.connections, self.confirmable
            for name, position in self.moved_hops.items():
                if name not in connections:
                    later[name] = position      # taken when it is connected again
                elif position > confirmable.get(name, 0.0):
                    hops[name] = position
            self.moved_hops = later
            recent, self.moved_recent = self.moved_recent, []
            if len(recent) > RECENT:
                del recent[:len(recent) - RECENT]
            if origins or hops or recent:
                point = _Checkpoint(self.checkpoints + 1, origins, hops, recent,
                                    taken_at=host.loop.time())
                if self._unsaved_since is None:
                    self._unsaved_since = point.taken_at
                barrier = host.feature_barrier()
                if barrier is not None:
                    point.barrier, point.mark = barrier, barrier.mark()
                last_stamp = host.last_stamp
                waiting = point.waiting
                for conn in host.connections.values():
                    ledger = conn.ledger
                    if ledger is None:
                        continue
                    queue = conn.queue
                    if queue is not None and queue.messages:
                        waiting[conn] = max(ledger.newest, last_stamp)
                    elif ledger.bytes:          # unconfirmed frames (len() is slower)
                        waiting[conn] = ledger.newest
                self._pending.append(point)
                self.checkpoints += 1
                if len(self._pending) > MAX_PENDING:
                    self._merge_oldest()
                self._bound_recent()
        self._save_ready()
        if self.writer is not None and not self._saving \
                and host.last_stamp > self._stamp_saved:
            # Our own stamp moved and no save carries it (an agent's results, a relay
            # whose checkpoints wait seconds for the next hop): save it alone.
            self._save(None, {}, {}, [])

    def connection_closed(self, conn: Connection) -> None:
        """Forget ``conn`` in the pending checkpoints: its unconfirmed frames went to the
        replay log when it dropped, so nothing waits for it (``_ready`` skips it). Kept,
        the reference held every dropped session (its TLS state, buffers, ledger) for as
        long as a checkpoint stayed pending: with one peer that never confirms, forever;
        about 50 sessions a minute at 5 000 agents with 1 % reconnect churn (part of the
        soak's RSS growth, issue 21)."""
        for point in self._pending:
            point.waiting.pop(conn, None)

    def _merge_oldest(self) -> None:
        """Fold the oldest pending checkpoint into the next one (it waits longer)."""
        first, second = self._pending[0], self._pending[1]
        # second.number stays: a save of it covers both.
        for name, ts in first.origins.items():
            if ts > second.origins.get(name, 0.0):
                second.origins[name] = ts
        for name, ts in first.hops.items():
            if ts > second.hops.get(name, 0.0):
                second.hops[name] = ts
        for conn, ts in first.waiting.items():
            if ts > second.waiting.get(conn, 0.0):
                second.waiting[conn] = ts
        second.recent = first.recent + second.recent
        if second.barrier is None:      # (marks only grow: the second's covers the first's)
            second.barrier, second.mark = first.barrier, first.mark
        second.taken_at = min(first.taken_at, second.taken_at)
        del self._pending[0]

    def _bound_recent(self) -> None:
        """Only the newest RECENT stamps count (the in-memory set holds no more): the
        pending checkpoints drop older ones, so a peer that never confirms, or saves that
        keep failing, cannot make them grow (review)."""
        room = RECENT
        for point in reversed(self._pending):
            if len(point.recent) > room:
                point.recent = point.recent[len(point.recent) - room:] if room else []
            room -= len(point.recent)

    def unsaved_seconds(self, now: float) -> float:
        """How long the oldest checkpoint not on disk yet has waited (0: none waits), a
        failed save included (its positions go into the next checkpoint)."""
        since = self._unsaved_since
        return max(0.0, now - since) if since is not None else 0.0

    def _check_stuck(self, now: float) -> None:
        """Log, once in a while, a checkpoint that cannot be saved, and why: meanwhile
        this node confirms nothing new to its peers, whose replay logs grow."""
        waited = self.unsaved_seconds(now)
        if waited < STUCK_AFTER:
            self._stuck_logged_at = None
            return
        if self._stuck_logged_at is not None and now - self._stuck_logged_at < STUCK_REPEAT:
            return
        self._stuck_logged_at = now
        log.warning("processed positions not saved for %.0f s, so nothing new is confirmed "
                    "to the peers (they keep what they sent since): %s", waited,
                    self._blocker(self._pending[0] if self._pending else None))

    def _blocker(self, point: _Checkpoint | None) -> str:
        """What keeps ``point`` (the oldest checkpoint waiting) from being saved, in words."""
        if point is None:
            return "the last save failed (logged above); the next checkpoint retries it"
        unconfirmed = self._unconfirmed(point)
        if unconfirmed is None:
            return ("waiting for the result writers' queue to commit the results handed "
                    "to it (a slow or full disk under DATA_DIR/writers-queue?)")
        if unconfirmed:
            conn = unconfirmed[0]
            confirmed = conn.stats.confirmed_log_position if conn.stats is not None else 0.0
            return (f"waiting for [{conn.endpoint}] to confirm what it was sent "
                    f"(log::SetLogPosition up to {point.waiting[conn]:.6f}; it confirmed "
                    f"{confirmed:.6f})")
        if self._saving:
            return "the save under DATA_DIR/received is still running (a slow disk?)"
        return "a save of an earlier checkpoint is running or failed; retrying"

    def _unconfirmed(self, point: _Checkpoint) -> list[Connection] | None:
        """The connections ``point`` still waits for; None while the writers' feed has
        not committed everything it was handed before ``point``."""
        if point.barrier is not None and not point.barrier.reached(point.mark):
            return None
        connections = self.host.connections
        out = []
        for conn, stamp in point.waiting.items():
            if conn.endpoint is None or connections.get(conn.endpoint) is not conn:
                continue    # dropped: its unconfirmed frames went to the replay log
            ledger, queue = conn.ledger, conn.queue
            if ledger is not None and not len(ledger) and (queue is None
                                                            or not queue.messages):
                continue    # everything it was given is confirmed
            stats = conn.stats
            if stats is None or stats.confirmed_log_position < stamp:
                out.append(conn)
        return out

    def _save_ready(self) -> None:
        """Save the newest checkpoint whose connections all confirmed (and the older
        ones with it), unless a save is still running; else the part of one that waits
        for a single connection only (``_save_part``)."""
        if self._saving or not self._pending or self.writer is None:
            return
        ready = -1
        part: tuple[int, str] | None = None
        for index in range(len(self._pending) - 1, -1, -1):   # the newest ready one
            unconfirmed = self._unconfirmed(self._pending[index])
            if unconfirmed is None:
                continue
            if not unconfirmed:
                ready = index
                break
            if part is None and len(unconfirmed) == 1 and unconfirmed[0].endpoint:
                part = (index, unconfirmed[0].endpoint)
        if ready < 0:
            if part is not None:
                self._save_part(*part)
            return
        taken, self._pending = self._pending[:ready + 1], self._pending[ready + 1:]
        origins: dict[str, float] = {}
        hops: dict[str, float] = {}
        recent: list[Stamp] = []
        number = taken[-1].number
        for point in taken:
            origins.update(point.origins)
            hops.update(point.hops)
            recent += point.recent
        self._save(number, origins, hops, recent)

    def _save(self, number: int | None, origins: dict[str, float],
              hops: dict[str, float], recent: list[Stamp]) -> None:
        """Commit ``origins`` through the replay log's writer; then ``hops`` may be
        confirmed (``_saved_done``). ``number``: the checkpoint saved whole, if one."""
        store, writer = self.store, self.writer
        assert store is not None and writer is not None
        self._saving = True
        # Our own newest stamp too, under our name (never one of the origins: nobody
        # sends us our own messages), read back by attach().
        on_disk = dict(origins)
        on_disk[self.host.name] = self._stamp_saving = self.host.last_stamp
        # A part confirms a hop position before the origins it covers are saved: a kill
        # -9 after that and before the peer heard the confirmation had the peer send them
        # again, to a node that had forgotten processing them: twice to the writers
        # (review). So a part saves the position it confirms. (A whole checkpoint's
        # origins cover its hops; saving those too doubled the entries of every save.)
        if number is None:
            for name, ts in hops.items():
                on_disk[HOP_KEY_PREFIX + name] = ts
        try:
            future = writer.call(store.save, on_disk, recent, RECENT)
        except Exception as e:   # the writer is closing
            self._saving = False
            log.debug("receive positions not saved: %s", e)
            return
        loop = self.host.loop
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(
            self._saved_done, f, number, origins, hops, recent))

    def _save_part(self, index: int, endpoint: str) -> None:
        """Confirm ``endpoint`` its position from the checkpoints up to ``index``, the
        newest of which waits for ``endpoint``'s connection only. The messages that
        position covers came from ``endpoint`` and none was relayed back to it, so all
        of them are safe here already. That breaks the wait of two of our nodes that
        each have frames unconfirmed at the other (results up while commands come down;
        HA masters relaying their satellites' results to each other): each confirms the
        other only after a checkpoint, and each checkpoint waited for the other.

        Origins' positions are not saved here: one covers every older message of that
        origin, whichever hop brought it, and one of those may have been relayed to
        ``endpoint`` and be unconfirmed there still (found by review). They wait for the
        whole checkpoint."""
        hops: dict[str, float] = {}
        for point in self._pending[:index + 1]:
            ts = point.hops.pop(endpoint, None)
            if ts is not None and ts > hops.get(endpoint, 0.0):
                hops[endpoint] = ts
        if hops:
            # With the stamps of the messages the position covers: after a kill -9 before
            # the peer heard the position, the peer sends them to our HA partner, which
            # relays them to us (review).
            recent: list[Stamp] = []
            for point in self._pending[:index + 1]:
                if point.recent:
                    recent += [stamp for stamp in point.recent if stamp[2] == endpoint]
                    point.recent = [stamp for stamp in point.recent if stamp[2] != endpoint]
            self._save(None, {}, hops, recent)  # through the writer: after what came before

    def _saved_done(self, future: concurrent.futures.Future[Any], number: int | None,
                    origins: dict[str, float], hops: dict[str, float],
                    recent: list[Stamp]) -> None:
        self._saving = False
        error = future.exception()
        if error is not None:
            self.save_failures += 1
            # What this save carried moves again: the next checkpoint takes it.
            for moved, taken in ((self.moved_origins, origins), (self.moved_hops, hops)):
                for name, ts in taken.items():
                    if ts > moved.get(name, 0.0):
                        moved[name] = ts
            self.moved_recent = (recent + self.moved_recent)[-RECENT:]
            self.host.ratelog.log(("receipts", "save"), logging.ERROR,
                                  "receive positions not saved (peers will replay what "
                                  "this node processed since): %s", error)
            return
        self.saves += 1
        self._stamp_saved = max(self._stamp_saved, self._stamp_saving)
        if number is None:      # a part: drop the checkpoints it left empty
            kept = []
            for point in self._pending:
                if point.origins or point.hops or point.recent:
                    kept.append(point)
                elif not kept:      # the oldest ones, all saved now
                    number = point.number
            self._pending = kept
        if number is not None:
            self.saved_through = max(self.saved_through, number)
        self._unsaved_since = self._pending[0].taken_at if self._pending else None
        for name, ts in origins.items():
            if ts > self._saved.get(name, 0.0):
                self._saved[name] = ts
        confirmable = self.confirmable
        for name, ts in hops.items():
            if ts > confirmable.get(name, 0.0):
                confirmable[name] = ts

    async def close(self) -> None:
        """Save what is ready at shutdown (after the node drained its queues)."""
        self.stop()
        if self.writer is None:
            return
        self.checkpoint()
        # A clean stop: what every connection confirmed, or everything when nothing
        # remains unconfirmed (the drain wrote the queues, the log keeps the rest).
        for _ in range(20):
            if not self._saving and not self._pending:
                return
            await asyncio.sleep(0.05)
            self._save_ready()

    def stats(self) -> dict[str, Any]:
        return {"origins": len(self.seen), "pending_checkpoints": len(self._pending),
                "checkpoints": self.checkpoints, "saves": self.saves,
                "save_failures": self.save_failures}


__all__ = ["CHECKPOINT_INTERVAL", "ORIGIN_KEY", "Receipts", "ReceiptsHost"]
