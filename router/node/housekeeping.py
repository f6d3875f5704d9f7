"""The node's timers: the once-a-second housekeeping and the log-position ticks.

Housekeeping (every second): disconnect slow consumers (a congested queue without write
progress for ``timeouts.slow_consumer``), expire relayed executions, let the replay log
prune, and check a slice of the sessions for read stalls (each session once per
``READ_STALL_CHECK_INTERVAL``).

Log positions: tell each peer how far we have received its messages
(``log::SetLogPosition``), one slice of the peers per tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Set
from typing import TYPE_CHECKING, Protocol

from router.node.context import NodeContext
from router.ops.logs import flush_repeats
from router.protocol import jsonrpc, netstring
from router.transport.readsched import ReadScheduler

if TYPE_CHECKING:  # pragma: no cover
    from router.node.executions import Executions
    from router.node.receipts import Receipts
    from router.node.replay import ReplayManager
    from router.node.stats import Connection, EndpointStats

log = logging.getLogger("router.node")

#: Icinga confirms the newest ts received from each peer this often (ApiTimerHandler).
LOG_POSITION_INTERVAL = 5.0
#: ... and does it for every peer in one go. We spread one round over this many timer
#: ticks, so 5 000 agents cost 100 small writes every 0.1 s instead of a 5 000-write loop
#: turn every 5 s (which delayed every message behind it by a few hundred ms).
LOG_POSITION_SLICES = 50
#: ... and send at most this many a second: with more peers than 5 s allows, a round
#: takes longer (10 000 agents: 20 s). Each is a TLS record and a write of its own; at
#: 10 000 agents sending results the 2 000 a second cost the node 8 % of its CPU
#: (perf/RESULTS.md). A peer that reconnects replays at most one round of what we had
#: already processed, and we drop those as duplicates.
LOG_POSITIONS_PER_SECOND = 500
#: The read-stall watchdog runs this often and flags sessions with unread input and no
#: read for this long (see Housekeeping.check_read_stalls).
READ_STALL_CHECK_INTERVAL = 5.0
READ_STALL_AFTER = 5.0
#: ... each round cut into this many ticks of its own timer (0.1 s): a tick looks at a
#: fiftieth of the sessions. Idle agents (a result a minute, a heartbeat every 20 s) all
#: qualify for the FIONREAD look, 3.5 us each; at 10 000 agents a slice a second held
#: the loop up to 31 ms.
READ_STALL_SLICES = 50


class HousekeepingHost(NodeContext, Protocol):
    """What the node's timers need from the node."""

    @property
    def connections(self) -> Mapping[str, Connection]: ...

    @property
    def anonymous(self) -> Set[Connection]: ...

    @property
    def reads(self) -> ReadScheduler: ...

    @property
    def replay(self) -> ReplayManager | None: ...

    @property
    def executions(self) -> Executions: ...

    @property
    def receipts(self) -> Receipts: ...

    @property
    def log_position_interval(self) -> float:
        """Seconds between two confirmations to the same peer (tests shorten it)."""

    def endpoint_stats(self, name: str) -> EndpointStats: ...

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool: ...

    def slow_consumer(self, conn: Connection, why: str) -> None: ...


class Housekeeping:
    """The two timers of a node and what they keep."""

    def __init__(self, host: HousekeepingHost) -> None:
        self.host = host
        self._timer: asyncio.TimerHandle | None = None
        self._log_position_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        #: connections the read-stall watchdog found not reading (see check_read_stalls)
        self.read_stalls = 0
        #: The watchdog's current round over the sessions, a slice a tick (see
        #: _check_stall_slice), and when it began.
        self._stall_round: list[Connection] = []
        self._stall_index = 0
        self._stall_round_start = -READ_STALL_CHECK_INTERVAL
        #: sessions seen once with input waiting and no read: {connection: last_read_at}
        self._stall_suspects: dict[Connection, float] = {}
        self._log_position_round: list[str] = []
        self._log_position_index = 0
        self._log_position_round_start = -LOG_POSITION_INTERVAL
        #: endpoint -> the position last confirmed on its current session.
        self._log_position_sent: dict[str, float] = {}

    def start(self) -> None:
        loop = self.host.loop
        self._timer = loop.call_later(1.0, self._on_housekeeping)
        self._log_position_timer = loop.call_later(
            self.host.log_position_interval / LOG_POSITION_SLICES, self._on_log_position_tick)
        self._stall_timer = loop.call_later(READ_STALL_CHECK_INTERVAL / READ_STALL_SLICES,
                                            self._on_stall_tick)

    def stop(self) -> None:
        for timer in (self._timer, self._log_position_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._log_position_timer = self._stall_timer = None

    def session_closed(self, endpoint: str) -> None:
        """``endpoint``'s session ended: its next session gets its position anew."""
        self._log_position_sent.pop(endpoint, None)

    def _on_housekeeping(self) -> None:
        # Re-armed whatever happens: one exception stopped slow-consumer cuts, execution
        # expiry and replay-log pruning until a restart (review).
        try:
            self._housekeeping()
        except Exception:
            log.exception("housekeeping failed; it runs again in 1 s")
        self._timer = self.host.loop.call_later(1.0, self._on_housekeeping)

    def _housekeeping(self) -> None:
        host = self.host
        now = host.loop.time()
        timeout = host.config.timeouts.slow_consumer
        for conn in list(host.connections.values()):
            queue = conn.queue
            if queue is not None and queue.congested \
                    and now - conn.last_write_progress > timeout:
                host.slow_consumer(conn, f"no write progress for {timeout:g} s")
        host.executions.prune()
        if host.replay is not None:
            host.replay.housekeeping(now)
        flush_repeats(time.time())

    def _on_stall_tick(self) -> None:
        loop = self.host.loop
        try:
            self._check_stall_slice(loop.time())
        except Exception:
            log.exception("read-stall check failed; it runs again at the next tick")
        self._stall_timer = loop.call_later(READ_STALL_CHECK_INTERVAL / READ_STALL_SLICES,
                                            self._on_stall_tick)

    def _check_stall_slice(self, now: float) -> None:
        """One tick's share of the watchdog's round: each session is still looked at
        once per READ_STALL_CHECK_INTERVAL, but not all in one loop turn. With 10 000
        idle agents (a result a minute each) every one of them qualified for the
        ``FIONREAD`` look, and the whole check held the loop 30-50 ms every 5 s; a fifth
        of it each second still up to 31 ms."""
        if self._stall_index >= len(self._stall_round):
            if now - self._stall_round_start < READ_STALL_CHECK_INTERVAL:
                return
            self._stall_round = self._sessions()
            self._stall_index = 0
            self._stall_round_start = now
            suspects = self._stall_suspects
            for conn in [c for c in suspects if c.state != "open"]:
                del suspects[conn]          # gone: keep no closed session alive
        step = -(-len(self._stall_round) // READ_STALL_SLICES)      # ceil
        start = self._stall_index
        self._stall_index = start + step
        self._check_stalls(self._stall_round[start:start + step], now)
        if self._stall_index >= len(self._stall_round):
            self._stall_round = []          # no references to closed sessions between rounds

    def check_read_stalls(self, now: float) -> None:
        """Watchdog for lost wake-ups: a session with input waiting in the kernel that is
        not read although back-pressure does not hold it and it is not waiting for its
        turn. Log it with its reading state, count it, and make it read again.

        One sighting proves nothing: under load the loop may simply not have reached the
        socket yet (its input can be a millisecond old while its last read, an idle
        agent's, is minutes old). So a session is only flagged when it is seen at two
        checks in a row with input waiting and no read in between: a reading transport is
        polled many times in READ_STALL_CHECK_INTERVAL seconds."""
        self._check_stalls(self._sessions(), now)

    def _sessions(self) -> list[Connection]:
        """Every established session, authenticated or anonymous (the watchdog's round)."""
        host = self.host
        return list(host.connections.values()) + list(host.anonymous)

    def _check_stalls(self, connections: list[Connection], now: float) -> None:
        host = self.host
        waiting = host.reads.waiting
        suspects = self._stall_suspects
        for conn in connections:
            if conn.state != "open" or conn.reading_paused \
                    or now - conn.last_read_at < READ_STALL_AFTER \
                    or (conn.parked and waiting):   # in the read queue: its turn comes
                suspects.pop(conn, None)
                continue
            unread = conn.unread_bytes()
            if unread <= 0:
                suspects.pop(conn, None)
                continue
            if suspects.get(conn) != conn.last_read_at:
                suspects[conn] = conn.last_read_at
                continue
            del suspects[conn]
            self.read_stalls += 1
            host.ratelog.log((conn.address, "read_stall"), logging.WARNING,
                             "[%s %s] %d bytes unread for %.0f s although nothing holds "
                             "its reading back (parked %s, blocked by %d, %d waiting to "
                             "read); reading again", conn.endpoint or conn.identity,
                             conn.address, unread, now - conn.last_read_at, conn.parked,
                             conn.blocked_by, waiting)
            conn.restart_reading()

    def _on_log_position_tick(self) -> None:
        """``_send_log_positions``, re-armed whatever happens: one exception stopped the
        confirmations to every peer, whose replay logs then grew (review)."""
        host = self.host
        try:
            interval = self._send_log_positions()
        except Exception:
            log.exception("log::SetLogPosition round failed; it goes on at the next tick")
            interval = max(host.log_position_interval,
                           len(host.connections) / LOG_POSITIONS_PER_SECOND)
        self._log_position_timer = host.loop.call_later(interval / LOG_POSITION_SLICES,
                                                        self._on_log_position_tick)

    def _send_log_positions(self) -> float:
        """Tell peers how far we have received their messages (``log::SetLogPosition``).

        Icinga replays everything newer than the position a peer confirmed; without this a
        peer would replay every earlier outage again on each reconnect. Icinga sends it to
        every peer every 5 s; we send it to each peer at most every
        ``log_position_interval``, only when it moved since the last one on this session,
        and no more than ``LOG_POSITIONS_PER_SECOND`` in all; a round over all peers is
        cut into ``LOG_POSITION_SLICES`` ticks.
        """
        host = self.host
        now = host.loop.time()
        connections = host.connections
        interval = max(host.log_position_interval,
                       len(connections) / LOG_POSITIONS_PER_SECOND)
        if self._log_position_index >= len(self._log_position_round) \
                and now - self._log_position_round_start >= interval:
            self._log_position_round = list(connections)
            self._log_position_index = 0
            self._log_position_round_start = now
        names = self._log_position_round
        start = self._log_position_index
        end = start + -(-len(names) // LOG_POSITION_SLICES)       # ceil
        self._log_position_index = end
        sent = self._log_position_sent
        for endpoint in names[start:end]:
            if endpoint not in connections:
                continue
            position = host.receipts.confirm_position(
                endpoint, host.endpoint_stats(endpoint).remote_log_position)
            if position > sent.get(endpoint, 0.0):
                sent[endpoint] = position
                host.send_to(endpoint, netstring.encode(jsonrpc.notification(
                    "log::SetLogPosition", {"log_position": position})),
                    "log::SetLogPosition")
        return interval


__all__ = ["Housekeeping", "HousekeepingHost", "LOG_POSITION_INTERVAL", "LOG_POSITION_SLICES",
           "LOG_POSITIONS_PER_SECOND",
           "READ_STALL_AFTER", "READ_STALL_CHECK_INTERVAL", "READ_STALL_SLICES"]
