"""Session life: admitting a peer after its TLS handshake, its session events, its end.

- ``connection_made``: the connection limit, and no inbound connection on the last
  ``FD_RESERVE`` file descriptors (refused and counted as ``out_of_fds``; libuv itself
  accepts and closes what arrives when none is left at all); ``handshake_failed``:
  counted and logged (rate-limited, by address and reason);
- ``handshake_done``: identify the peer by its certificate CN, refuse a dialled endpoint
  with the wrong CN, our own name, a second session of an endpoint, or one anonymous
  client too many; otherwise register the session (a known endpoint in the connection
  table, replaying its log first when the replay log has something for it) and start its
  protocol;
- session events other than messages: Hello, timeouts, protocol errors, HTTP on the
  cluster port; certificate requests (anonymous peers may send nothing else);
- ``connection_lost``: unregister, hand what was written but not confirmed and what was
  still queued to the replay log, release back-pressure, wake whoever waits.

The registry itself (``connections``, ``connected_names``, ``all_connections``,
``anonymous``, ``stats``) is the node's: the message path reads it for every message.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from typing import TYPE_CHECKING, Protocol

from cryptography import x509

from router import pki
from router.ops.metrics import LabeledCounter
from router.protocol import jsonrpc
from router.protocol.events import (Event, HelloReceived, NotJsonRpc, PeerTimedOut,
                                    ProtocolFailed)
from router.protocol.peer import PeerProtocol, Role
from router.routing import Relation
from router.transport import tls
from router.transport.admission import Admission, peer_text, source_address
from router.transport.lobby import Waiting
from router.transport.peerrate import PeerRate
from router.transport.sendqueue import Ledger, QueueLimits, SendQueue
from router.node.context import NodeContext
from router.node.stats import ANONYMOUS
from router.node.texts import TIMEOUT_TEXT, http_refusal

if TYPE_CHECKING:  # pragma: no cover
    from router.features.configsync import ConfigSync
    from router.node.enrollment import Enrollment
    from router.node.housekeeping import Housekeeping
    from router.node.receipts import Receipts
    from router.node.replay import ReplayManager
    from router.node.runtime import RuntimeObjects
    from router.node.stats import Connection, EndpointStats

log = logging.getLogger("router.node")


class SessionHost(NodeContext, Protocol):
    """What session admission and teardown need from the node (mostly its registry)."""

    @property
    def closing(self) -> bool: ...

    @property
    def queue_limits(self) -> QueueLimits: ...

    @property
    def handshake_failures(self) -> LabeledCounter: ...

    @property
    def tls_failures(self) -> tls.FailureStreak: ...

    @property
    def disconnects(self) -> LabeledCounter: ...

    @property
    def connections(self) -> dict[str, Connection]: ...

    @property
    def connected_names(self) -> set[str]: ...

    @property
    def all_connections(self) -> set[Connection]: ...

    @property
    def anonymous(self) -> set[Connection]: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def replay(self) -> ReplayManager | None: ...

    @property
    def receipts(self) -> Receipts: ...

    @property
    def configsync(self) -> ConfigSync | None: ...

    @property
    def runtime(self) -> RuntimeObjects | None: ...

    @property
    def housekeeping(self) -> Housekeeping: ...

    @property
    def enrollment(self) -> Enrollment: ...

    def endpoint_stats(self, name: str) -> EndpointStats: ...

    def wait_drained(self, conn: Connection) -> asyncio.Future[None]: ...

    def log_peer(self, conn: Connection, level: int, msg: str, *args: object) -> None: ...

    def count_refused(self, conn: Connection, label: str, reason: str) -> None: ...

    def refuse(self, conn: Connection, method: str, reason: str, text: str,
               msg: jsonrpc.Message | None = None) -> None: ...

    def unblock(self, source: Connection) -> None: ...


#: File descriptors kept free for the node itself when peers would take the last ones:
#: log files, the replay log (LMDB), the status listener's clients, dialling the parent.
FD_RESERVE = 64


def fd_ceiling() -> int:
    """The descriptor number from which inbound connections are refused: the soft
    RLIMIT_NOFILE (the node raised it to the hard limit at start) minus FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 62
    return max(0, soft - FD_RESERVE)


class Sessions:
    """Admits, tracks the waiters of, and retires the node's sessions."""

    def __init__(self, host: SessionHost) -> None:
        self.host = host
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._hello = {"capabilities": 1, "version": host.config.node.icinga_version}
        self._session_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._drain_waiters: dict[Connection, asyncio.Future[None]] = {}
        #: inbound sockets from this descriptor number up are refused (out of fds)
        self.fd_ceiling = fd_ceiling()
        #: Connections that were handshaking when a reload brought a new CRL, and that
        #: CRL: they finish with the context of their accept, which lacks it, so
        #: ``handshake_done`` checks their peer's certificate against it (review).
        self.crl_pending: dict[Connection, x509.CertificateRevocationList] = {}

    def max_message_size(self, endpoint: str | None) -> int:
        """Receive limit by trust (users.md P16): children are bounded tighter than parents."""
        limits = self.host.config.limits
        topology = self.host.topology
        if endpoint is None:
            return limits.max_message_size_anonymous
        relation = topology.relation(endpoint)
        if relation in (Relation.PARENT, Relation.PEER):
            return limits.max_message_size_peer
        if relation is Relation.CHILD:
            return limits.max_message_size_child
        zone = topology.zone_of(endpoint)
        if zone is not None and topology.is_ancestor(topology.local_zone, zone):
            return limits.max_message_size_child
        return limits.max_message_size_peer

    # ------------------------------------------------------------------ opening

    def connection_made(self, conn: Connection) -> None:
        host = self.host
        host.all_connections.add(conn)
        if conn.expected_endpoint is not None:
            if host.closing:
                conn.abort("node is shutting down")
            # Our own dial (the parent, a peer, a child we connect to): never refused by
            # the cap the inbound connections fill, as the fd reserve is kept for it; a
            # satellite full of its children's sessions refused its master (review).
            return
        refused = self._refusal(conn, conn.fileno(), len(host.all_connections) - 1)
        if refused is not None:
            # Out of admission's tables now, not at its connection_lost a turn later: the
            # next newcomer "evicted" it (counted, no room made) and got in over the cap.
            host.admission.release(conn)
            conn.abort(refused)

    def lobby_gate(self, entry: Waiting, waiting: int) -> bool:
        """May a connection just accepted wait in the listener's lobby for its first TLS
        record (``router.transport.lobby``)? The same limits as :meth:`connection_made`,
        with the lobby's ``waiting`` entries counted as connections."""
        return self._refusal(entry, entry.fileno(),
                             len(self.host.all_connections) + waiting) is None

    def _refusal(self, conn: Connection | Waiting, fd: int, others: int) -> str | None:
        """Why an inbound newcomer must go (logged and counted), or None: the node is
        stopping; near RLIMIT_NOFILE; or ``others`` connections fill ``max_connections``
        and no unauthenticated one could be dropped for it."""
        host = self.host
        if host.closing:
            return "node is shutting down"
        if fd >= self.fd_ceiling:
            # Near RLIMIT_NOFILE: refuse the newcomer, keep FD_RESERVE descriptors for the
            # sessions we have (log files, the replay log, dialling the parent, status).
            host.ratelog.log(("out_of_fds",), logging.ERROR,
                             "refusing connection from %s: %d of %d file descriptors in "
                             "use (RLIMIT_NOFILE; %d kept for the node itself); raise "
                             "LimitNOFILE / ulimit -n", conn.address, fd,
                             self.fd_ceiling + FD_RESERVE, FD_RESERVE)
            host.disconnects.inc(("out_of_fds",))
            return "out of file descriptors"
        limit = host.config.limits.max_connections
        if others < limit:
            return None
        if host.admission.oldest(exclude=conn):
            # Full, but an unauthenticated connection made room (issue 16 S3): the
            # oldest one that never finished its handshake is dropped for the newcomer.
            host.disconnects.inc(("unauthenticated_evicted",))
            host.ratelog.log(("max_connections_evict",), logging.WARNING,
                             "%d connections is the limit (limits.max_connections): dropped "
                             "the oldest unauthenticated connection for %s", limit,
                             conn.address)
            return None
        host.ratelog.log(("max_connections",), logging.WARNING,
                         "refusing connection from %s: %d connections is the limit "
                         "(limits.max_connections)", conn.address, limit)
        host.disconnects.inc(("max_connections",))
        return "too many connections"

    def handshake_failed(self, conn: Connection | Waiting, exc: BaseException) -> None:
        reason = tls.classify_handshake_error(exc)
        self.host.handshake_failures.inc((reason,))
        address = conn.address.rsplit(":", 1)[0]
        # Identical failures piling up rebuild the TLS context (users.md P1).
        self.host.tls_failures.failed(reason, address, self.host.loop.time())
        who = f"to {conn.expected_endpoint} " if conn.expected_endpoint else ""
        self.host.ratelog.log((address, reason), logging.WARNING,
                              "[%s] TLS handshake %sfailed (%s): %s", conn.address, who, reason,
                              tls.describe_handshake_error(exc))

    def handshake_done(self, conn: Connection) -> bool:
        """Identify the peer and start its session; False when the connection was closed."""
        host = self.host
        ratelog = host.ratelog
        host.tls_failures.succeeded()
        identity = conn.peer_identity()
        conn.identity = identity
        if self.crl_pending:
            crl = self.crl_pending.pop(conn, None)
            if crl is not None and self.close_if_revoked(conn, crl, "a reload during its "
                                                                     "handshake"):
                return False
        if conn.expected_endpoint is not None and identity != conn.expected_endpoint:
            # Icinga: "Unexpected certificate common name" -> drop.
            host.handshake_failures.inc(("unexpected_cn",))
            ratelog.log((conn.address, "unexpected_cn"), logging.WARNING,
                        "[%s] dialled endpoint %s but its certificate names %r; closing",
                        conn.address, conn.expected_endpoint, identity)
            conn.state = "closing"
            if not conn.ready.done():
                conn.ready.set_exception(ConnectionError(
                    f"certificate CN {identity!r} is not {conn.expected_endpoint!r}"))
            conn.abort("unexpected certificate CN")
            return False
        if identity == host.name:
            ratelog.log((conn.address, "self"), logging.WARNING,
                        "[%s] peer presents our own name %r; closing", conn.address, identity)
            conn.close("peer uses our own identity")
            return False
        endpoint: str | None = None
        if identity is not None and host.topology.endpoint(identity) is not None:
            endpoint = identity
        if endpoint is None:
            anonymous = len(host.anonymous)
            if anonymous >= host.config.limits.max_anonymous_clients:
                ratelog.log(("max_anonymous",), logging.WARNING,
                            "[%s] refusing anonymous connection (CN %r): %d anonymous "
                            "clients is the limit", conn.address, identity, anonymous)
                host.disconnects.inc(("max_anonymous",))
                conn.close("too many anonymous clients")
                return False
            if identity is None:
                ratelog.log((source_address(conn.address), "nocert"), logging.INFO,
                            "[%s] anonymous connection (no client certificate); only "
                            "certificate requests are accepted", conn.address)
            else:
                ratelog.log((identity, "unknown_cn"), logging.WARNING,
                            "[%s %s] certificate CN is not a configured endpoint; "
                            "treating it as anonymous", identity, conn.address)
        elif endpoint in host.connections:
            host.log_peer(conn, logging.INFO, "already connected to endpoint %s; closing the "
                          "new %s connection", endpoint, conn.direction)
            host.disconnects.inc(("duplicate",))
            conn.close("duplicate connection")
            return False
        config = host.config
        timeouts = config.timeouts
        peer = PeerProtocol(
            Role.CLIENT if conn.expected_endpoint else Role.SERVER, host.loop.time(),
            identity=identity, authenticated=endpoint is not None,
            max_message_size=self.max_message_size(endpoint),
            max_depth=config.limits.max_json_depth, hello_params=self._hello,
            heartbeat_interval=timeouts.heartbeat_interval,
            liveness_timeout=timeouts.liveness, anonymous_timeout=timeouts.anonymous,
            enrollment_timeout=timeouts.enrollment, first_byte_timeout=timeouts.connect)
        stats = host.endpoint_stats(endpoint or ANONYMOUS)
        replay = host.replay
        replaying = False
        if endpoint is None:
            host.anonymous.add(conn)
        else:
            host.connections[endpoint] = conn
            stats.connected_since = time.time()
            replaying = replay is not None and replay.wants_replay(endpoint)
            if not replaying:
                host.connected_names.add(endpoint)
            # Every configured endpoint has a relation (OTHER when not adjacent).
            relation = host.topology.relation(endpoint)
            if relation is Relation.CHILD and host.config.limits.agent_receive_buffer:
                zone = host.topology.zone_of(endpoint)
                if zone is not None and not host.topology.children(zone):
                    self._limit_receive_buffer(conn, host.config.limits.agent_receive_buffer)
            host.log_peer(conn, logging.INFO, "connected (%s, %s)%s", conn.direction,
                          relation.name.lower() if relation is not None else "other",
                          "; replaying its log first" if replaying else "")
        if endpoint is not None and replay is not None and replay.keeps_log(endpoint):
            conn.ledger = Ledger()
        limits = host.config.limits
        if limits.peer_bytes_per_second or limits.peer_messages_per_second:
            conn.input_rate = PeerRate(limits.peer_bytes_per_second,
                                       limits.peer_messages_per_second, host.loop.time())
        conn.start_session(peer, SendQueue(host.queue_limits), endpoint, stats)
        if endpoint is not None and host.configsync is not None and conn.state == "open":
            host.configsync.endpoint_connected(endpoint)  # Icinga: before the replay
        if endpoint is not None and host.runtime is not None and conn.state == "open" \
                and host.topology.relation(endpoint) in (Relation.CHILD, Relation.PEER):
            # Icinga's SendRuntimeConfigObjects: the objects our parent created at runtime
            # that its zone may see, after its zones' files and before the replay.
            host.runtime.send_on_connect(host, conn, endpoint)
        if endpoint is not None and replaying and conn.state == "open":
            assert replay is not None
            replay.start(conn)
        return True

    def _limit_receive_buffer(self, conn: Connection, size: int) -> None:
        """An agent's socket gets ``SO_RCVBUF`` = ``size`` (``limits.agent_receive_buffer``:
        what its held-back input may pin in the kernel)."""
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except (OSError, OverflowError, TypeError) as exc:
            self.host.log_peer(conn, logging.WARNING, "cannot set its receive buffer to %d "
                               "bytes (limits.agent_receive_buffer): %s", size, exc)

    def replay_done(self, conn: Connection, count: int, seconds: float) -> None:
        """The replay caught up with the log: from now on the peer gets live traffic."""
        host = self.host
        if conn.endpoint is None or host.connections.get(conn.endpoint) is not conn:
            return
        host.connected_names.add(conn.endpoint)
        level = logging.INFO if count else logging.DEBUG
        host.log_peer(conn, level, "replayed %d logged messages in %.2f s; now live", count,
                      seconds)

    # ------------------------------------------------------------------ session events

    def on_event(self, conn: Connection, event: Event) -> None:
        """A session event other than a message."""
        host = self.host
        if isinstance(event, HelloReceived):
            stats = conn.stats
            if stats is not None:
                stats.icinga_version = event.version
                stats.capabilities = event.capabilities
            if self._debug:
                host.log_peer(conn, logging.DEBUG, "hello: version %s capabilities %s",
                              event.version, event.capabilities)
        elif isinstance(event, PeerTimedOut):
            conn.close_reason = f"{event.reason} timeout"
            host.disconnects.inc((f"timeout_{event.reason}",))
            level = logging.INFO if event.reason == "anonymous" else logging.WARNING
            if conn.endpoint is None:   # unauthenticated: once per address and 10 s
                host.ratelog.log((source_address(conn.address), "timeout", event.reason),
                                 level, "[%s] closing: %s", conn.address,
                                 TIMEOUT_TEXT.get(event.reason, event.reason))
            else:
                host.log_peer(conn, level, "closing: %s", TIMEOUT_TEXT.get(
                    event.reason, event.reason))
        elif isinstance(event, ProtocolFailed):
            error = event.error
            conn.close_reason = f"protocol error: {error}"
            host.disconnects.inc((error.reason,))
            host.count_refused(conn, "-", error.reason)
            host.log_peer(conn, logging.WARNING, "protocol error, closing: %s", error)
        elif isinstance(event, NotJsonRpc):
            conn.close_reason = "not a JSON-RPC client"
            host.disconnects.inc(("not_jsonrpc",))
            # At most 200 escaped bytes of what the peer sent, once per address and 10 s
            # (issue 16 S3): a 60 000-byte request must not become a 60 000-byte line.
            host.ratelog.log((source_address(conn.address), "not_jsonrpc"), logging.INFO,
                             "[%s] client speaks HTTP or another protocol on the cluster "
                             "port (first bytes %s); closing", conn.address,
                             peer_text(event.first_bytes))
            conn.write_direct(http_refusal(host.config.status_listen))

    def pki_request(self, conn: Connection, msg: jsonrpc.Message) -> None:
        """Certificate requests are enrollment's (router.node.enrollment)."""
        self.host.enrollment.request_certificate(conn, msg)

    # ------------------------------------------------------------------ waiting

    def wait_drained(self, conn: Connection) -> asyncio.Future[None]:
        """Future resolved when ``conn``'s queue is below low water again (or it closed)."""
        fut = self._drain_waiters.get(conn)
        if fut is None or fut.done():
            fut = self._drain_waiters[conn] = self.host.loop.create_future()
        return fut

    def wake_drain_waiter(self, conn: Connection) -> None:
        fut = self._drain_waiters.pop(conn, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def wait_session_closed(self, endpoint: str) -> asyncio.Future[None]:
        """Future resolved when the endpoint's current session ends (now if none)."""
        fut: asyncio.Future[None] = self.host.loop.create_future()
        if endpoint not in self.host.connections:
            fut.set_result(None)
        else:
            self._session_waiters.setdefault(endpoint, []).append(fut)
        return fut

    # ------------------------------------------------------------------ closing

    def keep_written(self, conn: Connection) -> None:
        """Log what was written to ``conn`` and never confirmed (maybe lost in flight),
        under the zone the current topology gives its endpoint. Logged before the unsent
        frames: older. A reload calls it before it swaps the topology for the sessions it
        closes (an endpoint moved or removed: its frames belong to its old zone)."""
        host, replay, endpoint = self.host, self.host.replay, conn.endpoint
        if conn.ledger is None or replay is None or endpoint is None:
            return
        if conn.stats is not None:
            conn.stats.unconfirmed_overflow += conn.ledger.overflowed
            conn.ledger.overflowed = 0
        unconfirmed = conn.ledger.drain()
        if unconfirmed:
            kept = replay.persist_written(conn, unconfirmed)
            host.log_peer(conn, logging.INFO if kept == len(unconfirmed) else
                          logging.WARNING, "%d logged messages written but not "
                          "confirmed at disconnect: %d kept in the replay log",
                          len(unconfirmed), kept)

    def keep_unsent(self, conn: Connection) -> None:
        """Log the logged frames still queued for ``conn``; the rest are dropped, counted
        (see ``keep_written`` for when a reload calls it)."""
        host, replay, endpoint = self.host, self.host.replay, conn.endpoint
        if conn.queue is None:
            return
        leftovers = conn.queue.clear()
        kept = 0
        if leftovers and replay is not None and endpoint is not None:
            kept = replay.persist_unsent(conn, leftovers)
        dropped = len(leftovers) - kept
        if leftovers and conn.stats is not None:
            conn.stats.dropped += dropped
            host.log_peer(conn, logging.WARNING, "%d queued messages unsent at disconnect:"
                          " %d kept in the replay log, %d dropped", len(leftovers), kept,
                          dropped)

    def close_if_revoked(self, conn: Connection, crl: x509.CertificateRevocationList,
                         when: str) -> bool:
        """Close ``conn`` when ``crl`` revokes its peer's certificate (``when``: what found
        it, for the log); True when it did."""
        der = conn.peer_certificate_der()
        if der is None:
            return False
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return False
        if not pki.is_revoked(crl, cert):
            return False
        host = self.host
        host.disconnects.inc(("revoked",))
        host.log_peer(conn, logging.WARNING, "closing: its certificate (serial %x) is "
                      "revoked by %s (%s)", cert.serial_number, host.config.tls.crl_file,
                      when)
        conn.close(f"{when}: certificate revoked")
        return True

    def connection_lost(self, conn: Connection, exc: Exception | None) -> None:
        host = self.host
        self.crl_pending.pop(conn, None)
        host.all_connections.discard(conn)
        host.anonymous.discard(conn)
        endpoint = conn.endpoint
        connections = host.connections
        if endpoint is not None and connections.get(endpoint) is conn:
            del connections[endpoint]
            host.connected_names.discard(endpoint)
            host.housekeeping.session_closed(endpoint)
            stats = host.endpoint_stats(endpoint)
            stats.connected_since = None
            if conn.queue is not None:          # a counter: not reset by a reconnect
                stats.congested += conn.queue.high_water_events
                conn.queue.high_water_events = 0
            reason = conn.close_reason or (f"connection lost: {exc}" if exc else "peer closed")
            host.log_peer(conn, logging.INFO, "disconnected: %s", reason)
            for waiter in self._session_waiters.pop(endpoint, ()):
                if not waiter.done():
                    waiter.set_result(None)
        self.wake_drain_waiter(conn)
        self.keep_written(conn)
        host.receipts.connection_closed(conn)
        self.keep_unsent(conn)
        sources, conn.blocked_sources = conn.blocked_sources, None
        for source in sources or ():
            host.unblock(source)
        if conn.blocked_by:
            for other in connections.values():
                if other.blocked_sources:
                    other.blocked_sources.pop(conn, None)
            conn.blocked_by = 0


__all__ = ["SessionHost", "Sessions"]
