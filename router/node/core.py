"""The node: the one module that wires connections, routing, queues and the result view.

Everything else is given its collaborators; this module owns the mutable state of a
running node:

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
and put the same frame into every target's queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from router.protocol import answers
from router.transport import tls, tlslib
from router.config import RouterConfig
from router.ops.metrics import LabeledCounter, RateMeter
from router.protocol import jsonrpc, netstring
from router.protocol.events import (HelloReceived, MessageReceived, NotJsonRpc, PeerTimedOut,
                                    ProtocolFailed)
from router.protocol.peer import PeerProtocol, Role
from router.transport.readsched import ReadScheduler
from router.features.results import ResultStore
from router.routing import METHODS, ObjectZones, RouteDecision, Router, UnknownObjects
from router.transport.sendqueue import Ledger, QueueLimits, SendQueue
from router.routing import Relation, Topology
from router.transport import READ_BUFFER_SIZE, PeerConnection

log = logging.getLogger("router.node")

ANONYMOUS = "(anonymous)"
CHECK_RESULT = "event::CheckResult"
#: How long a relayed API execution waits for its event::ExecutedCommand.
EXECUTION_GRACE = 600.0
#: Icinga confirms the newest ts received from each peer this often (ApiTimerHandler).
LOG_POSITION_INTERVAL = 5.0
#: ... and does it for every peer in one go. We spread one round over this many timer
#: ticks, so 5 000 agents cost 100 small writes every 0.1 s instead of a 5 000-write loop
#: turn every 5 s (which delayed every message behind it by a few hundred ms).
LOG_POSITION_SLICES = 50
MAX_PENDING_EXECUTIONS = 100_000


@dataclass(slots=True)
class EndpointStats:
    """Counters of one endpoint; they survive reconnects so rates stay meaningful."""

    name: str
    received: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    #: (method label, reason) -> count
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes_received: int = 0
    bytes_sent: int = 0
    rate_in: RateMeter = field(default_factory=RateMeter)
    rate_out: RateMeter = field(default_factory=RateMeter)
    last_message_received: float | None = None
    last_message_sent: float | None = None
    connected_since: float | None = None
    icinga_version: int | None = None
    capabilities: int | None = None
    #: Position the peer confirmed with log::SetLogPosition (kept for the replay log).
    confirmed_log_position: float = 0.0
    #: Newest ``ts`` received from the endpoint (Icinga's remote_log_position). It
    #: outlives reconnects: an agent replaying its own log after a reconnect sends old
    #: messages again, and those already seen are dropped as stale.
    remote_log_position: float = 0.0
    #: Written logged frames that left the unconfirmed ledger unprotected (its cap),
    #: over past sessions (the current session's are on ``conn.ledger``).
    unconfirmed_overflow: int = 0
    coalesced: int = 0
    dropped: int = 0


class RateLimitedLog:
    """At most one line per key and interval; says how many similar lines were held back.

    Handshake failures from a scanner or a misconfigured fleet can come by the thousand per
    second (users.md P12: logs flooding the disk); the counters keep every event, the log
    keeps the operator's attention.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[Any, tuple[float, int]] = {}

    def log(self, key: Any, level: int, msg: str, *args: Any, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = (now, 0)
        if suppressed:
            msg = msg + " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, msg, *args)


#: The read-stall watchdog runs this often and flags sessions with unread input and no
#: read for this long (see Node._check_read_stalls).
READ_STALL_CHECK_INTERVAL = 5.0
READ_STALL_AFTER = 5.0


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
        self.reads = ReadScheduler(self.loop)
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
                                   unknown=UnknownObjects(config.objects.unknown))
        self.router = Router(self.topology, self.objects)
        tls_cfg = config.tls
        if server_context is None or client_context is None:
            server, client = tlslib.contexts(tls_cfg.library, tls_cfg.ca, tls_cfg.cert,
                                             tls_cfg.key)
        #: Session factories (router.tlslib) for accepted and dialled connections
        #: (``[tls] library``; a caller may pass its own).
        self.server_context: tlslib.TLSLibrary = server_context or server
        self.client_context: tlslib.TLSLibrary = client_context or client
        limits = config.limits
        self.queue_limits = QueueLimits(
            high_bytes=limits.send_queue_high_bytes, low_bytes=limits.send_queue_low_bytes,
            high_messages=limits.send_queue_high_messages,
            low_messages=limits.send_queue_low_messages,
            hard_bytes=max(4 * limits.send_queue_high_bytes, limits.send_queue_high_bytes))
        keep = config.results
        if keep == "auto":
            keep = "on" if self.topology.parent_zone is None else "off"
        self.results: ResultStore | None = ResultStore() if keep == "on" else None

        self.connections: dict[str, PeerConnection] = {}
        self.connected_names: set[str] = set()
        self.all_connections: set[PeerConnection] = set()
        #: Established sessions whose peer is not a known endpoint (max_anonymous_clients).
        self.anonymous: set[PeerConnection] = set()
        self.stats: dict[str, EndpointStats] = {}
        self.handshake_failures = LabeledCounter(("reason",))
        self.disconnects = LabeledCounter(("reason",))
        self.check_results_received = 0
        self.stale_dropped = 0
        #: connections the read-stall watchdog found not reading (see _check_read_stalls)
        self.read_stalls = 0
        self._last_stall_check = 0.0
        #: sessions seen once with input waiting and no read: {connection: last_read_at}
        self._stall_suspects: dict[PeerConnection, float] = {}
        self.started = time.time()
        self._last_stamp = 0.0
        self._pending_executions: dict[str, tuple[str, float]] = {}
        self._session_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._ratelog = RateLimitedLog(log)
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._hello = {"capabilities": 1, "version": config.node.icinga_version}
        self._housekeeping: asyncio.TimerHandle | None = None
        self._log_position_timer: asyncio.TimerHandle | None = None
        #: Seconds between two confirmations to the same peer (tests shorten it).
        self.log_position_interval = LOG_POSITION_INTERVAL
        self._log_position_round: list[str] = []
        self._log_position_index = 0
        self._log_position_round_start = -LOG_POSITION_INTERVAL
        #: endpoint -> the position last confirmed on its current session.
        self._log_position_sent: dict[str, float] = {}
        self.closing = False
        #: Set by the service: the dialler, for connect counters on /metrics.
        self.connector: Any = None
        #: Set by the service when accept_commands is on: runs ExecuteCommand requests.
        self.executor: Any = None
        #: Set by the service: the replay log (router.replay.ReplayManager).
        self.replay: Any = None
        #: Set by the service when [[checks]] are configured (router.checking.LocalChecks).
        self.checks: Any = None
        self._drain_waiters: dict[PeerConnection, asyncio.Future[None]] = {}
        self._command_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ helpers

    def endpoint_stats(self, name: str) -> EndpointStats:
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = EndpointStats(name)
        return stats

    def log_peer(self, conn: PeerConnection, level: int, msg: str, *args: Any) -> None:
        """Log with the peer named first: ``[agent1 127.0.0.1:40122] ...``."""
        who = conn.endpoint or conn.identity or "unidentified"
        log.log(level, "[%s %s] " + msg, who, conn.address, *args)

    def stamp(self) -> float:
        """Wall-clock ``ts`` for a relayed message, never going backwards.

        Receivers drop messages whose ``ts`` is older than the last one they saw from us,
        so a clock step back must not reorder what we send.
        """
        now = time.time()
        if now <= self._last_stamp:
            now = self._last_stamp
        self._last_stamp = now
        return now

    def max_message_size(self, endpoint: str | None) -> int:
        """Receive limit by trust (users.md P16): children are bounded tighter than parents."""
        limits = self.config.limits
        if endpoint is None:
            return limits.max_message_size_anonymous
        relation = self.topology.relation(endpoint)
        if relation in (Relation.PARENT, Relation.PEER):
            return limits.max_message_size_peer
        if relation is Relation.CHILD:
            return limits.max_message_size_child
        zone = self.topology.zone_of(endpoint)
        if zone is not None and self.topology.is_ancestor(self.topology.local_zone, zone):
            return limits.max_message_size_child
        return limits.max_message_size_peer

    def start(self) -> None:
        self._housekeeping = self.loop.call_later(1.0, self._on_housekeeping)
        self._log_position_timer = self.loop.call_later(
            self.log_position_interval / LOG_POSITION_SLICES, self._on_log_position_tick)

    def stop_housekeeping(self) -> None:
        for timer in (self._housekeeping, self._log_position_timer):
            if timer is not None:
                timer.cancel()
        self._housekeeping = self._log_position_timer = None

    # ------------------------------------------------------------------ connection life

    def new_inbound(self) -> PeerConnection:
        """Protocol factory for the listener."""
        return PeerConnection(self, self.server_context,
                              handshake_timeout=self.config.timeouts.handshake)

    def new_outbound(self, endpoint: str) -> PeerConnection:
        return PeerConnection(self, self.client_context, expected_endpoint=endpoint,
                              handshake_timeout=self.config.timeouts.handshake)

    def connection_made(self, conn: PeerConnection) -> None:
        self.all_connections.add(conn)
        if self.closing:
            conn.abort("node is shutting down")
            return
        if len(self.all_connections) > self.config.limits.max_connections:
            self._ratelog.log(("max_connections",), logging.WARNING,
                              "refusing connection from %s: %d connections is the limit "
                              "(limits.max_connections)", conn.address,
                              self.config.limits.max_connections)
            self.disconnects.inc(("max_connections",))
            conn.abort("too many connections")

    def handshake_failed(self, conn: PeerConnection, exc: BaseException) -> None:
        reason = tls.classify_handshake_error(exc)
        self.handshake_failures.inc((reason,))
        host = conn.address.rsplit(":", 1)[0]
        who = f"to {conn.expected_endpoint} " if conn.expected_endpoint else ""
        self._ratelog.log((host, reason), logging.WARNING,
                          "[%s] TLS handshake %sfailed (%s): %s", conn.address, who, reason,
                          tls.describe_handshake_error(exc))

    def handshake_done(self, conn: PeerConnection) -> bool:
        """Identify the peer and start its session; False when the connection was closed."""
        identity = conn.peer_identity()
        conn.identity = identity
        if conn.expected_endpoint is not None and identity != conn.expected_endpoint:
            # Icinga: "Unexpected certificate common name" -> drop.
            self.handshake_failures.inc(("unexpected_cn",))
            self._ratelog.log((conn.address, "unexpected_cn"), logging.WARNING,
                              "[%s] dialled endpoint %s but its certificate names %r; closing",
                              conn.address, conn.expected_endpoint, identity)
            conn.state = "closing"
            if not conn.ready.done():
                conn.ready.set_exception(ConnectionError(
                    f"certificate CN {identity!r} is not {conn.expected_endpoint!r}"))
            conn.abort("unexpected certificate CN")
            return False
        if identity == self.name:
            self._ratelog.log((conn.address, "self"), logging.WARNING,
                              "[%s] peer presents our own name %r; closing", conn.address,
                              identity)
            conn.close("peer uses our own identity")
            return False
        endpoint: str | None = None
        if identity is not None and self.topology.endpoint(identity) is not None:
            endpoint = identity
        if endpoint is None:
            anonymous = len(self.anonymous)
            if anonymous >= self.config.limits.max_anonymous_clients:
                self._ratelog.log(("max_anonymous",), logging.WARNING,
                                  "[%s] refusing anonymous connection (CN %r): %d anonymous "
                                  "clients is the limit", conn.address, identity, anonymous)
                self.disconnects.inc(("max_anonymous",))
                conn.close("too many anonymous clients")
                return False
            if identity is None:
                self._ratelog.log((conn.address, "nocert"), logging.INFO,
                                  "[%s] anonymous connection (no client certificate); only "
                                  "certificate requests are accepted", conn.address)
            else:
                self._ratelog.log((identity, "unknown_cn"), logging.WARNING,
                                  "[%s %s] certificate CN is not a configured endpoint; "
                                  "treating it as anonymous", identity, conn.address)
        elif endpoint in self.connections:
            self.log_peer(conn, logging.INFO, "already connected to endpoint %s; closing the "
                          "new %s connection", endpoint, conn.direction)
            self.disconnects.inc(("duplicate",))
            conn.close("duplicate connection")
            return False

        timeouts = self.config.timeouts
        peer = PeerProtocol(
            Role.CLIENT if conn.expected_endpoint else Role.SERVER, self.loop.time(),
            identity=identity, authenticated=endpoint is not None,
            max_message_size=self.max_message_size(endpoint),
            max_depth=self.config.limits.max_json_depth, hello_params=self._hello,
            heartbeat_interval=timeouts.heartbeat_interval,
            liveness_timeout=timeouts.liveness, anonymous_timeout=timeouts.anonymous,
            enrollment_timeout=timeouts.enrollment, first_byte_timeout=timeouts.connect)
        stats = self.endpoint_stats(endpoint or ANONYMOUS)
        replaying = False
        if endpoint is None:
            self.anonymous.add(conn)
        else:
            self.connections[endpoint] = conn
            stats.connected_since = time.time()
            replaying = self.replay is not None and self.replay.wants_replay(endpoint)
            if not replaying:
                self.connected_names.add(endpoint)
            self.log_peer(conn, logging.INFO, "connected (%s, %s)%s", conn.direction,
                          self.topology.relation(endpoint).name.lower(),
                          "; replaying its log first" if replaying else "")
        if endpoint is not None and self.replay is not None and self.replay.keeps_log(endpoint):
            conn.ledger = Ledger()
        conn.start_session(peer, SendQueue(self.queue_limits), endpoint, stats)
        if endpoint is not None and replaying and conn.state == "open":
            self.replay.start(conn)
        return True

    def replay_done(self, conn: PeerConnection, count: int, seconds: float) -> None:
        """The replay caught up with the log: from now on the peer gets live traffic."""
        if conn.endpoint is None or self.connections.get(conn.endpoint) is not conn:
            return
        self.connected_names.add(conn.endpoint)
        level = logging.INFO if count else logging.DEBUG
        self.log_peer(conn, level, "replayed %d logged messages in %.2f s; now live", count,
                      seconds)

    def wait_drained(self, conn: PeerConnection) -> asyncio.Future[None]:
        """Future resolved when ``conn``'s queue is below low water again (or it closed)."""
        fut = self._drain_waiters.get(conn)
        if fut is None or fut.done():
            fut = self._drain_waiters[conn] = self.loop.create_future()
        return fut

    def _wake_drain_waiter(self, conn: PeerConnection) -> None:
        fut = self._drain_waiters.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def connection_lost(self, conn: PeerConnection, exc: Exception | None) -> None:
        self.all_connections.discard(conn)
        self.anonymous.discard(conn)
        endpoint = conn.endpoint
        if endpoint is not None and self.connections.get(endpoint) is conn:
            del self.connections[endpoint]
            self.connected_names.discard(endpoint)
            self._log_position_sent.pop(endpoint, None)
            stats = self.endpoint_stats(endpoint)
            stats.connected_since = None
            reason = conn.close_reason or (f"connection lost: {exc}" if exc else "peer closed")
            self.log_peer(conn, logging.INFO, "disconnected: %s", reason)
            for waiter in self._session_waiters.pop(endpoint, ()):
                if not waiter.done():
                    waiter.set_result(None)
        self._wake_drain_waiter(conn)
        if conn.ledger is not None and self.replay is not None and endpoint is not None:
            # Written but never confirmed: maybe lost in flight. Logged first: older.
            if conn.stats is not None:
                conn.stats.unconfirmed_overflow += conn.ledger.overflowed
            unconfirmed = conn.ledger.drain()
            if unconfirmed:
                kept = self.replay.persist_written(conn, unconfirmed)
                self.log_peer(conn, logging.INFO if kept == len(unconfirmed) else
                              logging.WARNING, "%d logged messages written but not "
                              "confirmed at disconnect: %d kept in the replay log",
                              len(unconfirmed), kept)
        if conn.queue is not None:
            leftovers = conn.queue.clear()
            kept = 0
            if leftovers and self.replay is not None and endpoint is not None:
                kept = self.replay.persist_unsent(conn, leftovers)
            dropped = len(leftovers) - kept
            if leftovers and conn.stats is not None:
                conn.stats.dropped += dropped
                self.log_peer(conn, logging.WARNING, "%d queued messages unsent at disconnect:"
                              " %d kept in the replay log, %d dropped", len(leftovers), kept,
                              dropped)
        for source in conn.blocked_sources:
            self._unblock(source)
        conn.blocked_sources.clear()
        if conn.blocked_by:
            for other in self.connections.values():
                other.blocked_sources.discard(conn)
            conn.blocked_by = 0

    def wait_session_closed(self, endpoint: str) -> asyncio.Future[None]:
        """Future resolved when the endpoint's current session ends (now if none)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        if endpoint not in self.connections:
            fut.set_result(None)
        else:
            self._session_waiters.setdefault(endpoint, []).append(fut)
        return fut

    # ------------------------------------------------------------------ events

    def on_events(self, conn: PeerConnection, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is MessageReceived:
                self.on_message(conn, event.message)
            elif kind is HelloReceived:
                stats = conn.stats
                if stats is not None:
                    stats.icinga_version = event.version
                    stats.capabilities = event.capabilities
                if self._debug:
                    self.log_peer(conn, logging.DEBUG, "hello: version %s capabilities %s",
                                  event.version, event.capabilities)
            elif kind is PeerTimedOut:
                conn.close_reason = f"{event.reason} timeout"
                self.disconnects.inc((f"timeout_{event.reason}",))
                level = logging.INFO if event.reason == "anonymous" else logging.WARNING
                self.log_peer(conn, level, "closing: %s", _TIMEOUT_TEXT.get(
                    event.reason, event.reason))
            elif kind is ProtocolFailed:
                error = event.error
                conn.close_reason = f"protocol error: {error}"
                self.disconnects.inc((error.reason,))
                self._count_refused(conn, "-", error.reason)
                self.log_peer(conn, logging.WARNING, "protocol error, closing: %s", error)
            elif kind is NotJsonRpc:
                conn.close_reason = "not a JSON-RPC client"
                self.disconnects.inc(("not_jsonrpc",))
                self.log_peer(conn, logging.INFO, "client speaks HTTP or another protocol "
                              "on the cluster port (first bytes %r); closing", event.first_bytes)
                conn.write_direct(self._http_refusal())

    def _http_refusal(self) -> bytes:
        status = self.config.status_listen
        where = (f"http://{status[0]}:{status[1]}/v1/status" if status
                 else "disabled (status_listen = none)")
        body = (f"This port speaks the Icinga 2 cluster protocol (JSON-RPC over TLS).\n"
                f"The router's status API is {where}\n").encode()
        return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    def on_message(self, conn: PeerConnection, msg: jsonrpc.Message) -> None:
        stats = conn.stats
        method = msg.method
        label = method_label(method)
        if stats is not None:
            received = stats.received
            received[label] = received.get(label, 0) + 1
            stats.rate_in.add(self.loop.time())
            stats.last_message_received = time.time()
        endpoint = conn.endpoint
        if endpoint is None:
            if method == "pki::RequestCertificate":
                self._pki_request(conn, msg)
            else:
                self._refuse(conn, label, "anonymous",
                             "messages from anonymous peers are discarded")
            return
        if method is None:
            self._refuse(conn, label, "no_method", "message without a method")
            return
        ts = msg.ts
        if ts is not None and stats is not None:
            if ts < stats.remote_log_position:
                # Icinga drops these silently: it is how relay loops die out.
                self.stale_dropped += 1
                if self._debug:
                    self.log_peer(conn, logging.DEBUG, "dropping %s with ts %.6f older than "
                                  "%.6f", method, ts, stats.remote_log_position)
                return
            stats.remote_log_position = ts
        if method == CHECK_RESULT and self.checks is not None \
                and self.checks.accept_result(endpoint, msg.params):
            return  # the answer to our own ExecuteCommand (command_endpoint)
        decision = self.router.route(method, msg.params, endpoint, msg.origin_zone,
                                     self.connected_names)
        if not decision.accepted:
            self._refuse(conn, method, decision.reason or "refused",
                         _REFUSAL_TEXT.get(decision.reason or "", "refused by routing rules"),
                         msg)
            return
        if decision.local:
            self._consume(conn, msg, decision)
        if decision.targets or (decision.logged and decision.unreachable
                                and self.replay is not None):
            self._relay(conn, msg, decision)

    def _relay(self, source: PeerConnection, msg: jsonrpc.Message,
               decision: RouteDecision) -> None:
        from_zone = self.router.from_zone(source.endpoint, msg.origin_zone)  # type: ignore[arg-type]
        ts = self.stamp()
        frame = netstring.encode(jsonrpc.relay_payload(msg, ts, from_zone))
        if decision.logged and decision.unreachable and self.replay is not None:
            self.replay.persist(decision.unreachable, ts, frame, decision.object_zone)
        method = msg.method or ""
        if method == "event::ExecuteCommand" and msg.params is not None:
            self._remember_execution(source.endpoint, msg.params)  # type: ignore[arg-type]
        self._fan_out(frame, method, msg.params, decision.targets, source,
                      ts if decision.logged else 0.0)

    def originate(self, method: str, params: dict[str, Any]) -> bool:
        """Route a message this node produces (e.g. its own check results).

        Encoded once with a fresh ``ts``, sent to every target the routing rules give for
        a local origin, logged for unreachable zones, and consumed locally like a received
        one (the result view). Returns False when routing refused it.
        """
        decision = self.router.route_local(method, params, self.connected_names)
        if not decision.accepted:
            log.warning("not sending our own %s: %s", method, decision.reason)
            return False
        ts = self.stamp()
        frame = netstring.encode(jsonrpc.notification(method, params, ts=ts))
        if decision.logged and decision.unreachable and self.replay is not None:
            self.replay.persist(decision.unreachable, ts, frame, decision.object_zone)
        self._fan_out(frame, method, params, decision.targets, None,
                      ts if decision.logged else 0.0)
        if method == CHECK_RESULT:
            self.check_results_received += 1
            host, cr = params.get("host"), params.get("cr")
            if self.results is not None and isinstance(host, str) and isinstance(cr, dict):
                service = params.get("service")
                self.results.update(host, service if isinstance(service, str) else None, cr,
                                    self.name, time.time())
        return True

    def _fan_out(self, frame: bytes, method: str, params: dict[str, Any] | None,
                 targets: tuple[str, ...], source: PeerConnection | None,
                 ts: float = 0.0) -> None:
        """Queue one frame on every target; pause ``source`` behind congested queues.

        ``ts`` is set for logged messages: once written they wait in the target's ledger
        until it confirms them (see ``sendqueue.Ledger``)."""
        key = None
        if method == CHECK_RESULT and params is not None:
            key = (params.get("host"), params.get("service"))
        connections = self.connections
        for name in targets:
            target = connections.get(name)
            if target is None or target.queue is None:
                continue
            queue = target.queue
            coalesced = queue.coalesced
            queue.put(frame, method, key, ts)
            if queue.coalesced != coalesced and target.stats is not None:
                target.stats.coalesced += 1
            if queue.congested:
                if source is not None:
                    self._block(source, target)
                if queue.over_hard_limit:
                    self._slow_consumer(target, "queue above its hard limit")
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

    # ------------------------------------------------------------------ local consumption

    def _consume(self, conn: PeerConnection, msg: jsonrpc.Message,
                 decision: RouteDecision) -> None:
        method = msg.method
        params = msg.params or {}
        if method == CHECK_RESULT:
            self.check_results_received += 1
            if self.results is not None:
                host = params.get("host")
                service = params.get("service")
                cr = params.get("cr")
                if isinstance(host, str) and isinstance(cr, dict):
                    self.results.update(host, service if isinstance(service, str) else None,
                                        cr, conn.endpoint or "", time.time())
        elif method == "event::ExecuteCommand":
            self._execute_command(conn, params)
        elif method == "event::ExecutedCommand":
            self._executed_command(conn, msg)
        elif method == "log::SetLogPosition":
            position = params.get("log_position")
            if isinstance(position, (int, float)) and conn.stats is not None:
                conn.stats.confirmed_log_position = max(conn.stats.confirmed_log_position,
                                                        float(position))
                if self.replay is not None and conn.endpoint is not None:
                    self.replay.confirm(conn.endpoint, float(position))
                if conn.ledger is not None:
                    conn.ledger.confirm(float(position))
        elif method == "pki::RequestCertificate":
            self._pki_request(conn, msg)
        elif method == "pki::UpdateCertificate":
            self._refuse(conn, method, "unsupported",
                         "certificate updates are not applied by this node yet", msg)
        elif method == "config::Update":
            zones = params.get("update")
            self._refuse(conn, method, "unsupported",
                         f"config sync is not implemented; ignoring zones "
                         f"{sorted(zones) if isinstance(zones, dict) else '?'}", msg)

    def _execute_command(self, conn: PeerConnection, params: dict[str, Any]) -> None:
        """A parent asks us to run a check (command_endpoint) or an API execution."""
        if self.config.node.accept_commands and self.executor is not None:
            task = self.loop.create_task(self._run_command(conn.endpoint or "", params))
            self._command_tasks.add(task)
            task.add_done_callback(self._command_tasks.discard)
            return
        # Commands off: answer the way Icinga does, so the parent records UNKNOWN / exit
        # 126 instead of waiting for a result that never comes.
        output = f"Endpoint '{self.name}' does not accept commands."
        self._ratelog.log((conn.endpoint, "execute"), logging.WARNING,
                          "[%s %s] not executing command %r for %s: %s", conn.endpoint,
                          conn.address, params.get("command"), params.get("host"), output)
        frame = netstring.encode(answers.refuse_execute_command(
            params, endpoint_name=self.name, output=output, now=time.time()))
        method = "event::ExecutedCommand" if "source" in params else CHECK_RESULT
        self.send_to(conn.endpoint or "", frame, method)

    async def _run_command(self, requester: str, params: dict[str, Any]) -> None:
        assert self.executor is not None
        try:
            payload = await self.executor.execute(params, requester)
        except Exception:  # a bug here must not take the node down
            log.exception("[%s] executing %r failed", requester, params.get("command"))
            return
        if payload is None:
            return
        method = "event::ExecutedCommand" if "source" in params else CHECK_RESULT
        if not self.send_to(requester, netstring.encode(payload), method):
            log.warning("[%s] result of %r dropped: the requester is no longer connected",
                        requester, params.get("command"))

    def _remember_execution(self, requester: str, params: dict[str, Any]) -> None:
        source = params.get("source")
        if not isinstance(source, str):
            return
        if len(self._pending_executions) >= MAX_PENDING_EXECUTIONS:
            self._prune_executions(force=True)
        deadline = params.get("deadline")
        expires = (float(deadline) if isinstance(deadline, (int, float)) else time.time()) \
            + EXECUTION_GRACE
        self._pending_executions[source] = (requester, expires)

    def _executed_command(self, conn: PeerConnection, msg: jsonrpc.Message) -> None:
        execution = (msg.params or {}).get("execution")
        pending = self._pending_executions.pop(execution, None) \
            if isinstance(execution, str) else None
        if pending is None:
            self._refuse(conn, "event::ExecutedCommand", "unknown_execution",
                         "no relayed execute-command request with this execution id", msg)
            return
        # Sent directly to the requester, like Icinga (no ts: SyncSendMessage).
        if not self.send_to(pending[0], netstring.encode(msg.raw), "event::ExecutedCommand"):
            self._refuse(conn, "event::ExecutedCommand", "unreachable",
                         f"requester {pending[0]} is not connected", msg)

    def _prune_executions(self, force: bool = False) -> None:
        now = time.time()
        expired = [k for k, (_, exp) in self._pending_executions.items() if exp < now]
        for key in expired:
            del self._pending_executions[key]
        if force and len(self._pending_executions) >= MAX_PENDING_EXECUTIONS:
            for key in list(self._pending_executions)[:MAX_PENDING_EXECUTIONS // 10]:
                del self._pending_executions[key]

    def _pki_request(self, conn: PeerConnection, msg: jsonrpc.Message) -> None:
        """Certificate requests: answer renewals of current certificates like Icinga.

        Every Icinga agent sends ``pki::RequestCertificate`` on each connect to its parent.
        If its certificate is ours and not due for renewal, Icinga's answer is status 1 and
        nothing is sent back for id-less requests, so we stay quiet as well. Signing new
        certificates is not implemented yet: those requests are refused and logged.
        """
        der = conn.peer_certificate_der()
        ca = self.config.tls.ca
        if der is not None and conn.endpoint is not None and tls.cert_is_current(der, ca,
                                                                                 time.time()):
            if msg.id is not None:
                conn.write_direct(netstring.encode(jsonrpc.response(msg.id, {
                    "status_code": 1,
                    "error": f"The certificate for CN '{conn.identity}' is valid and uptodate. "
                             f"Skipping automated renewal."})))
            return
        text = "certificate signing is not implemented on this node yet"
        self._refuse(conn, "pki::RequestCertificate", "unsupported", text, msg)
        if msg.id is not None:
            conn.write_direct(netstring.encode(jsonrpc.response(msg.id, {
                "status_code": 1, "error": text})))
        if conn.endpoint is None:
            conn.close("certificate request cannot be served")

    # ------------------------------------------------------------------ refusals

    def _count_refused(self, conn: PeerConnection, label: str, reason: str) -> None:
        stats = conn.stats or self.endpoint_stats(conn.endpoint or ANONYMOUS)
        key = (label, reason)
        stats.refused[key] = stats.refused.get(key, 0) + 1

    def _refuse(self, conn: PeerConnection, method: str, reason: str, text: str,
                msg: jsonrpc.Message | None = None) -> None:
        self._count_refused(conn, method_label(method), reason)
        who = conn.endpoint or conn.identity or "anonymous"
        self._ratelog.log((who, method, reason), logging.WARNING,
                          "[%s %s] refused %s: %s (%s)", who, conn.address, method, text, reason)
        if msg is not None and msg.id is not None and reason != "unsupported":
            conn.write_direct(netstring.encode(jsonrpc.error_response(
                msg.id, f"{method} refused: {text}")))

    # ------------------------------------------------------------------ backpressure

    def _block(self, source: PeerConnection, target: PeerConnection) -> None:
        if source is target or source in target.blocked_sources:
            return
        target.blocked_sources.add(source)
        source.blocked_by += 1
        if source.blocked_by == 1:
            source.pause_reading()
            if self._debug:
                self.log_peer(source, logging.DEBUG, "reading paused: %s is congested",
                              target.endpoint)

    def _unblock(self, source: PeerConnection) -> None:
        if source.blocked_by > 0:
            source.blocked_by -= 1
            if source.blocked_by == 0 and not self.closing:
                source.resume_reading()

    def on_sent(self, conn: PeerConnection, nbytes: int, methods: list[str]) -> None:
        stats = conn.stats
        if stats is None:
            return
        sent = stats.sent
        for method in methods:
            sent[method] = sent.get(method, 0) + 1
        stats.rate_out.add(self.loop.time(), len(methods))
        stats.last_message_sent = time.time()

    def queue_drained(self, conn: PeerConnection) -> None:
        """``conn``'s queue fell below low water: resume whoever it held back."""
        self._wake_drain_waiter(conn)
        sources = conn.blocked_sources
        conn.blocked_sources = set()
        for source in sources:
            self._unblock(source)

    def _slow_consumer(self, conn: PeerConnection, why: str) -> None:
        self.disconnects.inc(("slow_consumer",))
        self.log_peer(conn, logging.WARNING, "slow consumer (%s): %d bytes / %d messages "
                      "queued; disconnecting", why, conn.queue.bytes if conn.queue else 0,
                      len(conn.queue) if conn.queue else 0)
        conn.abort(f"slow consumer: {why}")

    def _on_housekeeping(self) -> None:
        now = self.loop.time()
        timeout = self.config.timeouts.slow_consumer
        for conn in list(self.connections.values()):
            queue = conn.queue
            if queue is not None and queue.congested \
                    and now - conn.last_write_progress > timeout:
                self._slow_consumer(conn, f"no write progress for {timeout:g} s")
        self._prune_executions()
        if self.replay is not None:
            self.replay.housekeeping(now)
        if now - self._last_stall_check >= READ_STALL_CHECK_INTERVAL:
            self._last_stall_check = now
            self._check_read_stalls(now)
        self._housekeeping = self.loop.call_later(1.0, self._on_housekeeping)

    def _check_read_stalls(self, now: float) -> None:
        """Watchdog for lost wake-ups: a session with input waiting in the kernel that is
        not read although back-pressure does not hold it and it is not waiting for its
        turn. Log it with its reading state, count it, and make it read again.

        One sighting proves nothing: under load the loop may simply not have reached the
        socket yet (its input can be a millisecond old while its last read, an idle
        agent's, is minutes old). So a session is only flagged when it is seen at two
        checks in a row with input waiting and no read in between: a reading transport is
        polled many times in READ_STALL_CHECK_INTERVAL seconds."""
        waiting = self.reads.waiting
        suspects, self._stall_suspects = self._stall_suspects, {}
        for conn in list(self.connections.values()) + list(self.anonymous):
            if conn.state != "open" or conn.reading_paused \
                    or now - conn.last_read_at < READ_STALL_AFTER:
                continue
            if conn.parked and waiting:
                continue                    # in the read queue: its turn comes
            unread = conn.unread_bytes()
            if unread <= 0:
                continue
            if suspects.get(conn) != conn.last_read_at:
                self._stall_suspects[conn] = conn.last_read_at
                continue
            self.read_stalls += 1
            self._ratelog.log((conn.address, "read_stall"), logging.WARNING,
                              "[%s %s] %d bytes unread for %.0f s although nothing holds "
                              "its reading back (parked %s, blocked by %d, %d waiting to "
                              "read); reading again", conn.endpoint or conn.identity,
                              conn.address, unread, now - conn.last_read_at, conn.parked,
                              conn.blocked_by, waiting)
            conn.restart_reading()

    def _on_log_position_tick(self) -> None:
        """Tell peers how far we have received their messages (``log::SetLogPosition``).

        Icinga replays everything newer than the position a peer confirmed; without this a
        peer would replay every earlier outage again on each reconnect. Icinga sends it to
        every peer every 5 s; we send it to each peer at most every
        ``log_position_interval``, only when it moved since the last one on this session,
        and a round over all peers is cut into ``LOG_POSITION_SLICES`` ticks.
        """
        now = self.loop.time()
        interval = self.log_position_interval
        if self._log_position_index >= len(self._log_position_round) \
                and now - self._log_position_round_start >= interval:
            self._log_position_round = list(self.connections)
            self._log_position_index = 0
            self._log_position_round_start = now
        names = self._log_position_round
        start = self._log_position_index
        end = start + -(-len(names) // LOG_POSITION_SLICES)       # ceil
        self._log_position_index = end
        sent = self._log_position_sent
        for endpoint in names[start:end]:
            if endpoint not in self.connections:
                continue
            position = self.endpoint_stats(endpoint).remote_log_position
            if position > sent.get(endpoint, 0.0):
                sent[endpoint] = position
                self.send_to(endpoint, netstring.encode(jsonrpc.notification(
                    "log::SetLogPosition", {"log_position": position})),
                    "log::SetLogPosition")
        self._log_position_timer = self.loop.call_later(interval / LOG_POSITION_SLICES,
                                                        self._on_log_position_tick)

    # ------------------------------------------------------------------ shutdown

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


def method_label(method: str | None) -> str:
    """Metric label for a method: unknown names collapse to "other" so that a peer cannot
    create an unbounded number of series (or dictionary keys) by inventing methods."""
    if method is None:
        return "(none)"
    return method if method in METHODS else "other"


_TIMEOUT_TEXT = {
    "liveness": "no data received within the liveness timeout",
    "anonymous": "anonymous connection closed after its grace period",
    "first_byte": "no data received after the TLS handshake",
}

_REFUSAL_TEXT = {
    "unknown_method": "unknown method",
    "no_params": "message has no params",
    "not_allowed": "this message may not flow in this direction",
    "unknown_object": "object's zone is unknown",
    "wrong_zone": "object belongs to another zone",
    "not_routed": "not routed by this node",
}


def name_list(names: Iterable[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 4995 more``: a satellite with 5 000 agent
    zones must not write a 60 KB log line."""
    names = list(names)
    if not names:
        return "-"
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def describe_topology(topology: Topology) -> str:
    """One line for the start-up log."""
    parent = topology.parent_zone or "-"
    children = name_list(topology.child_zones)
    count = f"{len(topology.child_zones)} child zones" if topology.child_zones else "child zones"
    return (f"endpoint {topology.local_endpoint} in zone {topology.local_zone} "
            f"(parent {parent}; {count} {children})")


__all__ = ["Node", "EndpointStats", "describe_topology", "name_list"]
