"""The node: the one class that wires connections, routing, queues and the result view.

Everything else is given its collaborators; ``Node`` owns the mutable state of a running
node:

- ``connections``: endpoint name -> the established ``PeerConnection`` (one per endpoint:
  a second connection for an endpoint that is already connected is closed, as Icinga does);
- per-endpoint ``EndpointStats`` that outlive reconnects (counters never go backwards);
- the backpressure graph: a connection whose message was queued to a congested peer is
  paused (``transport.pause_reading``) until that peer's queue drains below low water;
- the result view (latest ``cr`` per checkable) on a node without a parent.

Hot path, once per received message (``on_message``): count it, drop it if its ``ts`` is
older than the last one from that endpoint (Icinga's loop guard), ask the pure router for
a decision, then either refuse (log line naming the endpoint, method and reason; counter;
the connection stays up), consume it locally, or encode it once (new ``ts``, ``originZone``)
and put the same frame into every target's queue. That path, back-pressure and the
refusals are here, in ``Node`` itself: they run tens of thousands of times a second and
read the node's state directly.

What happens less often is done by collaborators the node owns, each typed against a small
protocol of what it needs from the node: ``sessions.Sessions`` (admitting and retiring
sessions, their non-message events), ``executions.Executions`` (``ExecuteCommand`` /
``ExecutedCommand`` bookkeeping), ``housekeeping.Housekeeping`` (the timers: slow
consumers, read-stall watchdog, log positions). The service sets the others:
``connector``, ``executor``, ``replay`` and ``checks``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from router.config import RouterConfig
from router.ops.metrics import Histogram, LabeledCounter
from router.features.results import ResultStore
from router.protocol import jsonrpc, netstring
from router.protocol.events import MessageReceived
from router.routing import (ObjectZones, Relation, RouteDecision, Router, Topology,
                            UnknownObjects)
from router.routing.fields import FieldProblem, RefusalBudget, check_params
from router.transport import READ_BUFFER_SIZE, PeerConnection, tlslib
from router.transport.admission import Admission
from router.transport.readsched import ReadScheduler
from router.transport.turnbudget import TurnBudget
from router.transport.tls import FailureStreak
from router.transport.sendqueue import QueueLimits
from router.node.executions import Executions
from router.node.enrollment import Enrollment
from router.node.housekeeping import LOG_POSITION_INTERVAL, Housekeeping
from router.node.receipts import ORIGIN_KEY, Receipts
from router.node.replay import receipt_position
from router.node.sessions import Sessions
from router.node.stats import (ANONYMOUS, MSGS_IN, MSGS_OUT, Connection, EndpointStats,
                               TrafficTotals)
from router.node.texts import REFUSAL_TEXT, RateLimitedLog, method_label

if TYPE_CHECKING:  # pragma: no cover
    from router.features.checks import LocalChecks
    from router.features.configsync import ConfigSync
    from router.features.writers import WritersService
    from router.features.writers.feed import ResultFeed
    from router.features.commands import CommandExecutor
    from router.node.replay import ReplayManager
    from router.node.runtime import RuntimeObjects
    from router.protocol.events import Event
    from router.transport.connector import Connector
    from router.transport.listener import Listener
    from router.transport.lobby import Waiting

log = logging.getLogger("router.node")

CHECK_RESULT = "event::CheckResult"
RUNTIME_OBJECT_METHODS = frozenset({"config::UpdateObject", "config::DeleteObject"})
#: Smallest step between two stamps (a float near 1.8e9 resolves 2.4e-7 s).
STAMP_STEP = 1e-6
#: Seconds until the sources a drained queue still holds back are looked at again
#: (``Node._release_blocked``): the batch released before gets its read turns meanwhile.
RELEASE_RECHECK = 0.005
#: Buckets (bytes) of the TLS handshake size histograms: a typical agent handshake is
#: 1-3 KB; Icinga's "excessive message size" failures start past 100 KB (users.md P1, P2).
HANDSHAKE_BYTES_BUCKETS = (1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0, 102400.0)


def _loop_call_later(delay: float, callback: Any) -> asyncio.TimerHandle:
    """The running loop's ``call_later`` (admission's token bucket wakes its queue)."""
    return asyncio.get_running_loop().call_later(delay, callback)


class Node:
    """A running cluster node (master, satellite or agent)."""

    def __init__(self, config: RouterConfig, loop: asyncio.AbstractEventLoop | None = None,
                 *, server_context: tlslib.TLSLibrary | None = None,
                 client_context: tlslib.TLSLibrary | None = None) -> None:
        self.config = config
        self.loop = loop or asyncio.get_running_loop()
        #: Every peer connection reads into this one buffer and copies out at once
        #: (BufferedProtocol): no idle connection holds a read buffer.
        self.read_buffer = memoryview(bytearray(READ_BUFFER_SIZE))
        #: Bounds what one loop turn reads from all peers together (router.readsched).
        self.reads = ReadScheduler(self.loop, hold=self.hold_if_congested)
        #: Bounds the loop time a turn spends on connections that are not sessions yet.
        self.turn_budget = TurnBudget(self.loop, config.limits.admission_us_per_turn / 1e6)
        #: Threads for TLS handshake steps (None: in the loop thread); see transport.py.
        threads = config.limits.handshake_threads
        self.tls_pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="router-tls") if threads else None
        self.name = config.node.name
        self.topology = Topology(config.zones, config.endpoints, self.name)
        hosts = dict(config.objects.hosts)
        for check in config.checks:  # our own checks' hosts live in their zone (or ours)
            hosts.setdefault(check.host, check.zone or self.topology.local_zone)
        self.objects = ObjectZones(self.topology, hosts=hosts,
                                   unknown=UnknownObjects(config.objects.unknown),
                                   max_learned_per_zone=config.objects.max_learned_per_zone)
        self.router = Router(self.topology, self.objects)
        tls_cfg = config.tls
        if server_context is None or client_context is None:
            server, client = tlslib.contexts(tls_cfg.library, tls_cfg.ca, tls_cfg.cert,
                                             tls_cfg.key, tls_cfg.crl_file)
        #: Session factories (router.tlslib) for accepted and dialled connections
        #: (``[tls] library``; a caller may pass its own).
        self.server_context: tlslib.TLSLibrary = server_context or server
        self.client_context: tlslib.TLSLibrary = client_context or client
        limits = config.limits
        #: targets whose held-back sources are to be released a batch at a time
        self._release_scheduled: set[Connection] = set()
        self.queue_limits = QueueLimits(
            high_bytes=limits.send_queue_high_bytes, low_bytes=limits.send_queue_low_bytes,
            high_messages=limits.send_queue_high_messages,
            low_messages=limits.send_queue_low_messages,
            hard_bytes=max(4 * limits.send_queue_high_bytes, limits.send_queue_high_bytes))
        keep = config.results
        if keep == "auto":
            keep = "on" if self.topology.parent_zone is None else "off"
        self.results: ResultStore | None = ResultStore(
            limits.max_results, limits.max_results_per_zone) if keep == "on" else None

        #: Caps on connections that have not finished the handshake (issue 16 S3).
        self.admission = Admission(limits.max_unauthenticated,
                                   limits.max_unauthenticated_per_address,
                                   limits.max_concurrent_handshakes,
                                   idle_grace=config.timeouts.unauthenticated_idle,
                                   rate=limits.new_connections_per_second,
                                   burst=limits.new_connections_burst,
                                   call_later=_loop_call_later,
                                   stall_after=config.timeouts.handshake_stall)
        self.connections: dict[str, Connection] = {}
        self.connected_names: set[str] = set()
        self.all_connections: set[Connection] = set()
        #: Established sessions whose peer is not a known endpoint (max_anonymous_clients).
        self.anonymous: set[Connection] = set()
        self.stats: dict[str, EndpointStats] = {}
        #: The whole node's traffic, counted beside the endpoints' (the console's totals).
        self.traffic = TrafficTotals()
        self.handshake_failures = LabeledCounter(("reason",))
        #: Bytes per TLS handshake, both ways (a chain that grew too large shows here).
        self.handshake_received = Histogram(HANDSHAKE_BYTES_BUCKETS)
        self.handshake_sent = Histogram(HANDSHAKE_BYTES_BUCKETS)
        #: Identical handshake failures in a row; the service rebuilds TLS on a streak.
        self.tls_failures = FailureStreak()
        self.disconnects = LabeledCounter(("reason",))
        self.check_results_received = 0
        self.stale_dropped = 0
        self.started = time.time()
        self._last_stamp = 0.0
        #: At most one log line per key and 10 s (handshake failures, refusals, dials).
        self.ratelog = RateLimitedLog(log)
        self._debug = log.isEnabledFor(logging.DEBUG)
        #: Seconds between two confirmations to the same peer (tests shorten it).
        self.log_position_interval = LOG_POSITION_INTERVAL
        self.closing = False
        #: Set by the service: the dialler, for connect counters on /metrics.
        self.connector: Connector | None = None
        #: Set by the service: the cluster listener, for accept error counters.
        self.listener: Listener | None = None
        #: Set by the service when accept_commands is on: runs ExecuteCommand requests.
        self.executor: CommandExecutor | None = None
        #: Set by the service: the replay log.
        self.replay: ReplayManager | None = None
        #: Set by the service when [[writers]] are configured: consumed check results
        #: are handed to it (a deque append; the writing runs off this loop).
        self.writers: WritersService | None = None
        #: Set by the service when [[checks]] are configured.
        self.checks: LocalChecks | None = None
        #: Set by the service when accept_config or zones_dir is set (config sync).
        self.configsync: ConfigSync | None = None
        #: Set by the service: the objects our parent created at runtime.
        self.runtime: RuntimeObjects | None = None
        self.sessions = Sessions(self)
        self.executions = Executions(self)
        self.housekeeping = Housekeeping(self)
        #: What this node processed, per origin; persisted with the replay log.
        self.receipts = Receipts(self)
        #: Certificate requests and updates (router.node.enrollment).
        self.enrollment = Enrollment(self)

    # ------------------------------------------------------------------ helpers

    def endpoint_stats(self, name: str) -> EndpointStats:
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = EndpointStats(name, totals=self.traffic)
        return stats

    def log_peer(self, conn: Connection, level: int, msg: str, *args: Any) -> None:
        """Log with the peer named first: ``[agent1 127.0.0.1:40122] ...``."""
        who = conn.endpoint or conn.identity or "unidentified"
        log.log(level, "[%s %s] " + msg, who, conn.address, *args)

    def stamp(self) -> float:
        """Wall-clock ``ts`` for a relayed message, strictly increasing.

        Receivers drop messages whose ``ts`` is older than the last one they saw from us,
        so a clock step back must not reorder what we send; and they drop a message from
        us whose ``ts`` is not newer than one they processed (``router.node.receipts``),
        so no two of our messages may share one. Never a whole number, so that a peer's
        receipt of one of our stamps is told from Icinga's replay marker.
        """
        now = time.time()
        if now <= self._last_stamp:
            now = self._last_stamp + STAMP_STEP
        if now.is_integer():    # whole numbers are Icinga's replay markers (receipt_position)
            now += STAMP_STEP
        self._last_stamp = now
        return now

    @property
    def last_stamp(self) -> float:
        """The newest ``ts`` this node stamped on a message."""
        return self._last_stamp

    def stamp_above(self, ts: float) -> None:
        """Stamp every later message above ``ts`` (``Receipts.attach``: the last stamp
        of the previous run, whatever the clock says now)."""
        if ts > self._last_stamp:
            self._last_stamp = ts

    def feature_barrier(self) -> ResultFeed | None:
        """What a checkpoint of processed positions waits for (``router.node.receipts``):
        the writers' feed, which commits the results it is handed a few ms later."""
        return self.writers.feed if self.writers is not None else None

    def max_message_size(self, endpoint: str | None) -> int:
        """Receive limit by trust (users.md P16): children are bounded tighter than parents."""
        return self.sessions.max_message_size(endpoint)

    # ------------------------------------------------------------------ node life

    def start(self) -> None:
        self.housekeeping.start()
        self.receipts.start()
        self.enrollment.start()

    def stop_housekeeping(self) -> None:
        self.housekeeping.stop()
        self.receipts.stop()
        self.enrollment.stop()

    @property
    def read_stalls(self) -> int:
        """Connections the read-stall watchdog found not reading."""
        return self.housekeeping.read_stalls

    def _check_read_stalls(self, now: float) -> None:
        """The read-stall watchdog's check (``Housekeeping.check_read_stalls``)."""
        self.housekeeping.check_read_stalls(now)

    async def drain(self, timeout: float) -> bool:
        """Stop reading, flush every queue; True when everything was written in time."""
        self.closing = True
        for conn in list(self.all_connections):
            conn.pause_reading()
            conn.schedule_flush()
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            busy = [c for c in self.all_connections
                    if c.state == "open" and ((c.queue is not None and c.queue.messages)
                                              or c.write_buffer_size)]
            if not busy:
                return True
            await asyncio.sleep(0.05)
        return False

    def close_all(self, reason: str) -> None:
        for conn in list(self.all_connections):
            conn.close(reason)
        if self.tls_pool is not None:
            # Handshakes still queued are cancelled; their connections are closing.
            self.tls_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ sessions
    # (the transport's ConnectionOwner / DialOwner calls; the work is in ``sessions``)

    def debug_changed(self) -> None:
        """Whether the debug-only lines are written, read once (they are on hot paths)
        and again when a reload changes ``log_level``: reloading to debug did not turn
        them on (review)."""
        self._debug = self.sessions._debug = log.isEnabledFor(logging.DEBUG)

    def new_inbound(self) -> Connection:
        """Protocol factory for the listener."""
        return PeerConnection(self, self.server_context,
                              handshake_timeout=self.config.timeouts.handshake,
                              admission=self.admission)

    def new_outbound(self, endpoint: str) -> Connection:
        return PeerConnection(self, self.client_context, expected_endpoint=endpoint,
                              handshake_timeout=self.config.timeouts.handshake)

    def connection_made(self, conn: Connection) -> None:
        self.sessions.connection_made(conn)

    def handshake_failed(self, conn: Connection | Waiting, exc: BaseException) -> None:
        self._observe_handshake(conn)
        self.sessions.handshake_failed(conn, exc)

    def lobby_gate(self, entry: Waiting, waiting: int) -> bool:
        """May a connection just accepted wait in the listener's lobby?"""
        return self.sessions.lobby_gate(entry, waiting)

    def handshake_done(self, conn: Connection) -> bool:
        """Identify the peer and start its session; False when the connection was closed."""
        self._observe_handshake(conn)
        return self.sessions.handshake_done(conn)

    def _observe_handshake(self, conn: Connection | Waiting) -> None:
        self.handshake_received.observe(conn.handshake_bytes_in)
        self.handshake_sent.observe(conn.handshake_bytes_out)

    def replay_done(self, conn: Connection, count: int, seconds: float) -> None:
        """The replay caught up with the log: from now on the peer gets live traffic."""
        self.sessions.replay_done(conn, count, seconds)

    def wait_drained(self, conn: Connection) -> asyncio.Future[None]:
        """Future resolved when ``conn``'s queue is below low water again (or it closed)."""
        return self.sessions.wait_drained(conn)

    def connection_lost(self, conn: Connection, exc: Exception | None) -> None:
        self.sessions.connection_lost(conn, exc)

    def wait_session_closed(self, endpoint: str) -> asyncio.Future[None]:
        """Future resolved when the endpoint's current session ends (now if none)."""
        return self.sessions.wait_session_closed(endpoint)

    # ------------------------------------------------------------------ messages

    def on_events(self, conn: Connection, events: list[Event]) -> None:
        for event in events:
            if type(event) is MessageReceived:
                self.on_message(conn, event.message)
            else:
                self.sessions.on_event(conn, event)

    def on_message(self, conn: Connection, msg: jsonrpc.Message) -> None:
        stats = conn.stats
        method = msg.method
        label = method_label(method)
        if stats is not None:
            received = stats.received
            received[label] = received.get(label, 0) + 1
            self.traffic.msgs_in += 1
            stats.rates.add(MSGS_IN, self.loop.time())
            stats.last_message_received = time.time()
        endpoint = conn.endpoint
        if endpoint is None:
            if method == "pki::RequestCertificate":
                self.sessions.pki_request(conn, msg)
            else:
                self.refuse(conn, label, "anonymous",
                            "messages from anonymous peers are discarded")
            return
        if method is None:
            self.refuse(conn, label, "no_method", "message without a method")
            return
        problem = check_params(method, msg.params)
        if problem is not None:     # a parameter of the wrong JSON type (issue 16 S2)
            self.refuse_invalid(conn, method, problem, msg)
            return
        ts = msg.ts
        origin: tuple[str, float] | None = None
        if ts is not None and stats is not None:
            if ts < stats.remote_log_position:
                # Icinga drops these silently: it is how relay loops die out, and how a
                # replay of what we processed before ends (router.node.receipts).
                self.stale_dropped += 1
                stats.duplicates_dropped += 1
                if self._debug:
                    self.log_peer(conn, logging.DEBUG, "dropping %s with ts %.6f older than "
                                  "%.6f", method, ts, stats.remote_log_position)
                return
            stats.remote_log_position = ts
            # Exactly-once between our nodes: dedup by where the message entered.
            raw_origin = msg.data.get(ORIGIN_KEY)
            receipts = self.receipts
            receipts.moved_hops[endpoint] = ts
            if raw_origin is None:
                origin = (endpoint, ts)
                if self.topology.local_zone_ha or \
                        receipts.seen_hop.get(endpoint, endpoint) != endpoint:
                    # Our HA partner relays the peer's messages to us too, in its own
                    # order: one it relayed may be newer than one the peer still sends
                    # us directly. A watermark dropped the older one (lost: the partner
                    # confirmed it to the peer); the hop and recent stamps tell. So
                    # also after a reload removed the partner, while the newest we
                    # have from the peer came through it (review).
                    fresh = receipts.accept(endpoint, endpoint, ts)
                else:
                    seen = receipts.seen
                    fresh = ts > seen.get(endpoint, 0.0)
                    if fresh:
                        seen[endpoint] = ts
                        receipts.moved_origins[endpoint] = ts
            else:
                origin = receipts.origin(endpoint, raw_origin, ts)
                fresh = receipts.accept(endpoint, origin[0], origin[1])
            if not fresh:
                stats.duplicates_dropped += 1
                if self._debug:
                    self.log_peer(conn, logging.DEBUG, "dropping %s from origin %s: ts "
                                  "%.6f already processed", method, origin[0], origin[1])
                return
        if method == CHECK_RESULT and self.checks is not None \
                and self.checks.accept_result(endpoint, msg.params):
            return  # the answer to our own ExecuteCommand (command_endpoint)
        decision = self.router.route(method, msg.params, endpoint, msg.origin_zone,
                                     self.connected_names)
        if not decision.accepted:
            text = REFUSAL_TEXT.get(decision.reason or "", "refused by routing rules")
            host = msg.params.get("host") if msg.params is not None else None
            if type(host) is str:   # which host an agent tried to claim (issue 16 S1)
                text = f"{text}: host {host[:200]!r}"
            self.refuse(conn, method, decision.reason or "refused", text, msg)
            return
        if method in RUNTIME_OBJECT_METHODS and self.runtime is not None:
            self.runtime.observe(method, msg.params, decision.object_zone)
        if decision.local:
            self._consume(conn, msg, decision)
        if decision.targets or (decision.logged and decision.unreachable
                                and self.replay is not None):
            self._relay(conn, msg, decision, origin)

    def _relay(self, source: Connection, msg: jsonrpc.Message,
               decision: RouteDecision, origin: tuple[str, float] | None = None) -> None:
        from_zone = self.router.from_zone(source.endpoint, msg.origin_zone)  # type: ignore[arg-type]
        ts = self.stamp()
        frame = netstring.encode(jsonrpc.relay_payload(msg, ts, from_zone, origin))
        if decision.logged and decision.unreachable and self.replay is not None:
            self.replay.persist(decision.unreachable, ts, frame, decision.object_zone)
        method = msg.method or ""
        if method == "event::ExecuteCommand" and msg.params is not None:
            self.executions.remember(source.endpoint, msg.params,  # type: ignore[arg-type]
                                     decision.object_zone)
        self._fan_out(frame, method, msg.params, decision.targets, source,
                      ts if decision.logged else 0.0)

    def originate(self, method: str, params: dict[str, Any],
                  came_from: str | None = None) -> bool:
        """Route a message this node produces (e.g. its own check results).

        Encoded once with a fresh ``ts``, sent to every target the routing rules give for
        a local origin, logged for unreachable zones, and consumed locally like a received
        one (the result view). Returns False when routing refused it. ``came_from``: the
        endpoint a message we pass on in our name came from (a stored certificate
        request); as Icinga relays, it never goes back to that endpoint or its zone, so
        two HA peers do not bounce it between them.
        """
        decision = self.router.route_local(method, params, self.connected_names)
        if not decision.accepted:
            self.ratelog.log(("originate", method, decision.reason), logging.WARNING,
                             "not sending our own %s: %s", method, decision.reason)
            return False
        targets = decision.targets
        if came_from is not None:
            back = self.topology.zone_of(came_from)
            targets = tuple(t for t in targets if t != came_from
                            and (back is None or self.topology.zone_of(t) != back))
        ts = self.stamp()
        frame = netstring.encode(jsonrpc.notification(method, params, ts=ts))
        if decision.logged and decision.unreachable and self.replay is not None:
            self.replay.persist(decision.unreachable, ts, frame, decision.object_zone)
        self._fan_out(frame, method, params, targets, None, ts if decision.logged else 0.0)
        if method == CHECK_RESULT:
            self.check_results_received += 1
            host, cr = params.get("host"), params.get("cr")
            if self.results is not None and isinstance(host, str) and isinstance(cr, dict):
                service = params.get("service")
                self.results.update(host, service if isinstance(service, str) else None, cr,
                                    self.name, time.time(), decision.object_zone)
            if self.writers is not None:
                self.writers.submit_params(method, params)
        return True

    def _fan_out(self, frame: bytes, method: str, params: dict[str, Any] | None,
                 targets: tuple[str, ...], source: Connection | None,
                 ts: float = 0.0) -> None:
        """Queue one frame on every target; pause ``source`` behind congested queues.

        ``ts`` is set for logged messages: once written they wait in the target's ledger
        until it confirms them (see ``sendqueue.Ledger``)."""
        key = rank = None
        if method == CHECK_RESULT and params is not None:
            key = (params.get("host"), params.get("service"))
            cr = params.get("cr")
            if type(cr) is dict:
                end = cr.get("execution_end")
                rank = (cr.get("state"), end if type(end) is float or type(end) is int
                        else 0.0)
        if source is not None:
            source.fed_targets = targets
        connections = self.connections
        for name in targets:
            target = connections.get(name)
            if target is None or target.queue is None:
                continue
            queue = target.queue
            coalesced = queue.coalesced
            queue.put(frame, method, key, ts, rank)
            if queue.coalesced != coalesced and target.stats is not None:
                target.stats.coalesced += 1
            if queue.congested:
                if source is not None:
                    self._block(source, target)
                if queue.over_hard_limit:
                    self.slow_consumer(target, "queue above its hard limit")
                    continue
            target.schedule_flush()

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool:
        """Queue a frame for one endpoint (direct sends such as ExecutedCommand)."""
        target = self.connections.get(endpoint)
        if target is None or target.queue is None:
            return False
        target.queue.put(frame, method)
        target.schedule_flush()
        return True

    def _consume(self, conn: Connection, msg: jsonrpc.Message,
                 decision: RouteDecision) -> None:
        method = msg.method
        params = msg.params or {}
        if method == CHECK_RESULT:
            self.check_results_received += 1
            if self.writers is not None:
                self.writers.submit(msg.raw)
            if self.results is not None:
                host = params.get("host")
                service = params.get("service")
                cr = params.get("cr")
                if isinstance(host, str) and isinstance(cr, dict):
                    self.results.update(host, service if isinstance(service, str) else None,
                                        cr, conn.endpoint or "", time.time(),
                                        decision.object_zone)
            if self.checks is not None and \
                    self.topology.relation(conn.endpoint or "") is Relation.PEER:
                self.checks.observe(params)     # the HA partner ran one of ours
        elif method == "event::ExecuteCommand":
            self.executions.execute(conn, params)
        elif method == "event::ExecutedCommand":
            self.executions.executed(conn, msg)
        elif method == "log::SetLogPosition":
            # Bounded by now as well: after a restart we replay stamps of the last run
            # before we stamp anything new.
            position = receipt_position(params.get("log_position"),
                                        max(self._last_stamp, time.time()))
            stats = conn.stats
            if stats is not None and position is None:
                stats.log_positions_ignored += 1
                self.log_peer(conn, logging.DEBUG, "log position %r confirms nothing we sent "
                              "(a replay marker or a stamp we never made); ignored",
                              params.get("log_position"))
            elif stats is not None and position is not None:
                stats.confirmed_log_position = max(stats.confirmed_log_position, position)
                if self.replay is not None and conn.endpoint is not None:
                    self.replay.confirm(conn.endpoint, position)
                if conn.ledger is not None:
                    conn.ledger.confirm(position)
        elif method == "pki::RequestCertificate":
            self.sessions.pki_request(conn, msg)
        elif method == "pki::UpdateCertificate":
            self.enrollment.update_certificate(conn, msg)
        elif method == "config::Update":
            # Config sync (docs/config-sync.md): stored and relayed, or refused and counted.
            if self.configsync is None:
                self.refuse(conn, method, "not_accepted", "this node does not accept "
                            "configuration (node.accept_config is off)", msg)
            else:
                refusal = self.configsync.receive(conn.endpoint or "", params)
                if refusal is not None:
                    self.refuse(conn, method, refusal.reason, refusal.text, msg)

    # ------------------------------------------------------------------ refusals

    def count_refused(self, conn: Connection, label: str, reason: str) -> None:
        stats = conn.stats or self.endpoint_stats(conn.endpoint or ANONYMOUS)
        key = (label, reason)
        stats.refused[key] = stats.refused.get(key, 0) + 1

    def refuse(self, conn: Connection, method: str, reason: str, text: str,
               msg: jsonrpc.Message | None = None) -> None:
        """Count and log a refused message (the session stays up); answer it when it has
        an id, unless the refusal says only that the feature is not implemented."""
        self.count_refused(conn, method_label(method), reason)
        who = conn.endpoint or conn.identity or "anonymous"
        self.ratelog.log((who, method, reason), logging.WARNING,
                         "[%s %s] refused %s: %s (%s)", who, conn.address, method, text, reason)
        if msg is not None and msg.id is not None and reason != "unsupported":
            conn.write_direct(netstring.encode(jsonrpc.error_response(
                msg.id, f"{method} refused: {text}")))

    def refuse_invalid(self, conn: Connection, method: str, problem: FieldProblem,
                       msg: jsonrpc.Message) -> None:
        """Refuse a message with a parameter of the wrong type; disconnect a session that
        sends more than ``limits.max_invalid_messages`` of them in a minute."""
        self.refuse(conn, method, "invalid_field", problem.describe(), msg)
        budget = conn.invalid_budget
        if budget is None:
            budget = conn.invalid_budget = RefusalBudget(
                self.config.limits.max_invalid_messages)
        if not budget.spend(self.loop.time()) and conn.state == "open":
            self.disconnects.inc(("invalid_messages",))
            self.log_peer(conn, logging.WARNING, "more than %d malformed messages within "
                          "%g s (limits.max_invalid_messages); disconnecting", budget.limit,
                          budget.window)
            conn.close("too many malformed messages")

    # ------------------------------------------------------------------ backpressure

    def _block(self, source: Connection, target: Connection) -> None:
        blocked = target.blocked_sources
        if source is target or (blocked is not None and source in blocked):
            return
        if blocked is None:
            blocked = target.blocked_sources = {}       # made on first use (issue 14's RSS)
        blocked[source] = None
        source.blocked_by += 1
        if source.blocked_by == 1:
            source.pause_reading()
            if self._debug:
                self.log_peer(source, logging.DEBUG, "reading paused: %s is congested",
                              target.endpoint)

    def hold_if_congested(self, reader: Connection) -> None:
        """Before ``reader``'s read turn: pause it behind the first congested queue its
        last routed message went to (the read scheduler's ``hold``).

        Without this a reader parked before the queue congested read once more when its
        turn came, and only then was paused by what it read. With 10 000 agents each
        sending one checkable flat out through a satellite, every such read brought ~60
        versions of one result that the congested parent queue coalesced to one: the
        satellite parsed five results for each it forwarded (issue 22, the chain's max).
        Its messages are likely to go where its last one went; if not, it waits one
        drain of that queue, as it would after reading."""
        for name in reader.fed_targets:
            target = self.connections.get(name)
            if target is not None and target.queue is not None and target.queue.congested:
                self._block(reader, target)
                return

    def unblock(self, source: Connection) -> None:
        """One congested queue ``source`` fed drained (or closed): read again when it was
        the last."""
        if source.blocked_by > 0:
            source.blocked_by -= 1
            if source.blocked_by == 0 and not self.closing:
                source.resume_reading()

    def on_sent(self, conn: Connection, nbytes: int, methods: list[str]) -> None:
        stats = conn.stats
        if stats is None:
            return
        sent = stats.sent
        for method in methods:
            sent[method] = sent.get(method, 0) + 1
        self.traffic.msgs_out += len(methods)
        stats.rates.add(MSGS_OUT, self.loop.time(), len(methods))
        stats.last_message_sent = time.time()

    def queue_drained(self, conn: Connection) -> None:
        """``conn``'s queue fell below low water: resume whoever it held back, a batch
        at a time (``_release_blocked``)."""
        self.sessions.wake_drain_waiter(conn)
        self._release_blocked(conn)

    def _release_blocked(self, target: Connection) -> None:
        """Resume the oldest sources ``target``'s congestion holds back, as many as the
        room left below its high-water mark can take (each is expected to bring its next
        read); the rest stay paused and are looked at again shortly.

        Releasing them all at once made every one of them read once per drain cycle:
        with 10 000 agents sending flat out through a satellite, ~600 MB parsed (and
        coalesced away) for every 6 MB the parent queue could take, so the satellite
        read instead of writing to its parent (issue 22, the chain's max)."""
        self._release_scheduled.discard(target)
        sources = target.blocked_sources
        if not sources:
            return
        queue = target.queue
        if target.state != "open" or queue is None:
            target.blocked_sources = None
            for source in sources:
                self.unblock(source)
            return
        if queue.congested:
            return                          # queue_drained calls again once it drains
        room = self.queue_limits.high_bytes - queue.bytes
        released = 0
        while sources and released < room:
            source = next(iter(sources))
            del sources[source]
            released += source.expected_read
            self.unblock(source)
        if not sources:
            target.blocked_sources = None
        elif target not in self._release_scheduled:
            self._release_scheduled.add(target)
            self.loop.call_later(RELEASE_RECHECK, self._release_blocked, target)

    def slow_consumer(self, conn: Connection, why: str) -> None:
        """Disconnect a peer that does not read what we queue for it."""
        self.disconnects.inc(("slow_consumer",))
        self.log_peer(conn, logging.WARNING, "slow consumer (%s): %d bytes / %d messages "
                      "queued; disconnecting", why, conn.queue.bytes if conn.queue else 0,
                      len(conn.queue) if conn.queue else 0)
        conn.abort(f"slow consumer: {why}")


__all__ = ["Node"]
