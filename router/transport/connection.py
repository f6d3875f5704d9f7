"""asyncio glue for one peer connection: TCP, our own TLS pump, the sans-I/O peer.

Why not ``loop.create_server(ssl=...)``: asyncio's and uvloop's SSL transports swallow
handshake failures (an ``ssl.SSLError`` is an ``OSError`` and only shows up in debug
logs), never tell the protocol which certificate failed and why, and the stdlib one
allocates a 256 KiB read buffer per connection. Running a TLS session on memory buffers
ourselves (``router.tlslib``: pyOpenSSL or Python's ``ssl``) gives the node every
handshake failure with its reason (counted and logged with the address), the peer
certificate, a hard handshake deadline, and small per-connection memory.

Data path, per read (``BufferedProtocol``: into the node's one shared 64 KiB buffer):

1. feed the TCP bytes into the TLS session;
2. while handshaking, drive ``do_handshake``; afterwards hand all available plaintext
   to ``PeerProtocol.receive_data`` (one call per read, not per frame);
3. hand the protocol's events to the node, write its control frames (Hello, Heartbeat)
   straight away, and re-arm the single protocol timer;
4. while others wait to read or the turn's budget is spent, park until the node's
   ``ReadScheduler`` readmits it (round-robin, a byte budget a turn; transport.readsched).

Write path: the node queues frames (``self.queue``, ``schedule_flush``); one ``call_soon``
a loop turn joins them into one TLS ``write`` until the transport asks us to pause.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from router.protocol.events import PeerTimedOut
from router.protocol.peer import PeerProtocol, State
from router.protocol.tlsrecord import gather_first_record
from router.transport.owner import ConnectionOwner, TrafficStats
from router.transport.readsched import MIN_EXPECTED_READ, OVER_BUDGET_READ
from router.transport.sendqueue import Ledger, SendQueue
from router.transport.sockinfo import transport_fileno, unread_bytes
from router.transport.tlslib import handshake_step

if TYPE_CHECKING:  # pragma: no cover
    from router.routing.fields import RefusalBudget
    from router.transport.admission import Admission
    from router.transport.peerrate import PeerRate
    from router.transport.tlslib import TLSLibrary, TLSSession

log = logging.getLogger("router.transport")

#: Plaintext handed to the TLS session's write per flush step.
FLUSH_CHUNK = 256 * 1024
#: Transport write buffer marks: above high, pause_writing() stops our flushes.
WRITE_BUFFER_HIGH = 512 * 1024
WRITE_BUFFER_LOW = 128 * 1024
READ_CHUNK = 256 * 1024
#: Largest read from a socket (the node's shared read buffer).
READ_BUFFER_SIZE = 64 * 1024
#: Ciphertext fed to the TLS session at a time (see _receive).
BIO_SLICE = 4 * 1024
#: At most one log line a session per this many seconds about its input caps.
THROTTLE_LOG_INTERVAL = 60.0
#: A graceful close waits for the buffer to drain: a peer that stopped reading held the
#: session, and its endpoint's reconnects were refused as duplicates (a review). Abort then.
CLOSE_GRACE = 10.0
#: ``_throttle_logged`` of a session that never logged (one float for all sessions).
_NEVER_LOGGED = -THROTTLE_LOG_INTERVAL

HANDSHAKING = "handshaking"
OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"
#: The owner's per-endpoint stats type (the node's ``EndpointStats``).
StatsT = TypeVar("StatsT", bound=TrafficStats)


class PeerConnection(asyncio.BufferedProtocol, Generic[StatsT]):
    """One TCP connection to a cluster peer (inbound or outbound).

    ``node`` is its owner (``ConnectionOwner``); ``stats`` the owner's counters of the
    peer's endpoint, of which the connection itself only counts bytes (``TrafficStats``).
    """

    # Every attribute is listed here (assigning an unlisted one raises AttributeError):
    # an instance dict would be a 1.5 KB hash table, slots are 8 bytes each (10 000 peers
    # save ~14 MB, issue 22). For the same reason what most connections never use (an
    # inbound ``ready`` future, ``blocked_sources``, handshake backlogs) is made on use.
    __slots__ = (
        "_admission", "_first_bytes", "_flush_scheduled", "_handshake_backlog",
        "_handshake_handle", "_handshake_step", "_handshake_timeout", "_has_handshake_slot",
        "_hold_output", "_last_read", "_parked", "_reading_paused", "_ready", "_slot_backlog",
        "_throttle_handle", "_throttle_logged", "_timer", "_timer_when", "_tls", "_tls_library",
        "_transport_reading", "_waited", "_writing_paused", "address", "blocked_by",
        "blocked_sources", "close_reason", "created", "direction", "endpoint", "events_received",
        "expected_endpoint", "fed_targets", "handshake_bytes_in", "handshake_bytes_out",
        "identity", "input_rate", "invalid_budget", "last_read_at", "last_write_progress",
        "ledger", "loop", "node", "opened_at", "peer", "queue", "state", "stats", "transport",
    )

    def __init__(self, node: ConnectionOwner[PeerConnection[StatsT]],
                 tls_library: TLSLibrary, *, expected_endpoint: str | None = None,
                 handshake_timeout: float = 10.0, admission: Admission | None = None) -> None:
        self.node = node
        self.loop = node.loop
        self._tls_library = tls_library
        #: Set when we dialled: the certificate CN must equal this endpoint name.
        self.expected_endpoint = expected_endpoint
        self.direction = "outbound" if expected_endpoint else "inbound"
        self._handshake_timeout = handshake_timeout
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.state = HANDSHAKING
        #: Certificate CN of the peer (None: no certificate).
        self.identity: str | None = None
        #: Endpoint name once the node accepted the peer as a known endpoint.
        self.endpoint: str | None = None
        self.peer: PeerProtocol | None = None
        self.queue: SendQueue | None = None
        #: Logged frames written but not confirmed by the peer (set by the node when the
        #: peer's zone keeps a replay log).
        self.ledger: Ledger | None = None
        self.stats: StatsT | None = None
        #: Congested queues this connection feeds; reading pauses while non-zero.
        self.blocked_by = 0
        #: Connections paused because they fed our congested queue, oldest first (None:
        #: none so far; released a batch at a time as it drains: Node.queue_drained).
        self.blocked_sources: dict[PeerConnection[StatsT], None] | None = None
        self.fed_targets: tuple[str, ...] = ()  # where its last message went (node's hold)
        self.created = self.loop.time()
        self.opened_at: float | None = None
        self.last_write_progress = self.created
        self.close_reason: str | None = None
        #: ``ready``: made here when we dial (the dialler awaits it), else on first use.
        self._ready: asyncio.Future[None] | None = (
            self.loop.create_future() if expected_endpoint is not None else None)
        self._tls: TLSSession | None = None
        #: Session tickets wait for our first write (see _handshake_outcome).
        self._hold_output = False
        self._handshake_handle: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._writing_paused = False
        #: Paused by back-pressure (``pause_reading``).
        self._reading_paused = False
        #: Waiting in the node's ReadScheduler for its next turn to read.
        self._parked = False
        #: Whether we last told the transport to read.
        self._transport_reading = True
        self._last_read = 0
        #: Bytes received and sent before the session opened (the TLS handshake), for the
        #: handshake-size histograms: oversized chains and hellos show up there (P2).
        self.handshake_bytes_in = 0
        self.handshake_bytes_out = 0
        #: loop time of the last read (the node's read-stall watchdog)
        self.last_read_at = self.created
        #: A handshake step running in the node's TLS threads, and bytes that came meanwhile.
        self._handshake_step: asyncio.Future[BaseException | bool] | None = None
        self._handshake_backlog: list[bytes] | None = None
        self._flush_scheduled = False
        #: Pre-auth admission of the listener (inbound only): caps on unauthenticated
        #: connections and concurrent handshakes (router.transport.admission).
        self._admission = admission
        self._has_handshake_slot = admission is None   # holds an admission handshake slot
        self._slot_backlog: list[bytes] | None = None  # bytes that came while waiting for one
        self._first_bytes: bytearray | None = None  # inbound: a first TLS record not yet whole
        self._waited: tuple[bytes, float] | None = None     # see first_bytes_waited
        #: The node's budget of malformed messages for this session (set on first use).
        self.invalid_budget: RefusalBudget | None = None
        #: Caps on this session's input, bytes and messages a second (set by the node when
        #: ``[limits] peer_bytes_per_second``/``peer_messages_per_second`` are on).
        self.input_rate: PeerRate | None = None
        self.events_received = 0        # messages handed to the node (``input_rate`` charges)
        #: Set while ``input_rate`` holds our reading back (the timer that ends it).
        self._throttle_handle: asyncio.TimerHandle | None = None
        self._throttle_logged = _NEVER_LOGGED

    @property
    def ready(self) -> asyncio.Future[None]:
        """Resolved when the session is established (or failed); the dialler waits on it.
        An inbound connection's is made on first use, resolved if the outcome is known."""
        future = self._ready
        if future is None:
            future = self._ready = self.loop.create_future()
            # unawaited: retrieve the outcome, or asyncio warns of an unretrieved exception
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            if self.peer is not None:
                future.set_result(None)
            elif self.state in (CLOSING, CLOSED):
                future.set_exception(ConnectionError(self.close_reason or "connection closed"))
        return future

    def _settle_ready(self, error: str | None) -> None:
        """Resolve ``ready`` (None: the session is up) if anyone holds it."""
        future = self._ready
        if future is not None and not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(ConnectionError(error))

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        started = self.node.turn_budget.clock()
        self.transport = tcp = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if peername:
            self.address = f"{peername[0]}:{peername[1]}"
        # TCP_NODELAY: uvloop and asyncio both set it on every TCP transport (a test checks).
        tcp.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        if self.expected_endpoint is not None:  # inbound: made on its first whole record
            # SNI = endpoint name, as Icinga sends it (no Environment suffix in 2.13).
            self._tls = self._tls_library.session(server_hostname=self.expected_endpoint)
        waited, self._waited = self._waited, None   # out of the lobby: since the accept
        timeout = self._handshake_timeout - (self.loop.time() - waited[1] if waited else 0.0)
        self._handshake_handle = self.loop.call_later(max(0.0, timeout),
                                                      self._on_handshake_timeout)
        if self._admission is not None:
            # Older unauthenticated connections over their caps are dropped for us.
            self._admission.admit(self, counted=waited is None)
        self.node.connection_made(self)
        if self.state == HANDSHAKING and self._tls is not None:
            self._do_handshake()                # our ClientHello
        elif self._admission is not None:       # inbound: admission work (transport.turnbudget)
            if waited is not None and self.state == HANDSHAKING:
                self._handshake_read(memoryview(waited[0]))
            self.node.turn_budget.charge(self.node.turn_budget.clock() - started)

    def first_bytes_waited(self, data: bytes, accepted_at: float) -> None:
        """Out of the lobby (transport.lobby): its first record, its accept (loop time)."""
        self._waited = (data, accepted_at)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state == OPEN and self.node.reads.over_budget:
            # A short read, then our turn like every reader (transport.readsched).
            return self.node.read_buffer[:OVER_BUDGET_READ]
        return self.node.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._last_read = nbytes
        self.node.reads.note_read(nbytes)
        self.last_read_at = self.loop.time()
        data = self.node.read_buffer[:nbytes]
        if self.state == HANDSHAKING:
            budget = self.node.turn_budget
            started = budget.clock()
            self._handshake_read(data)
            budget.charge(budget.clock() - started)
        elif self.state == OPEN:
            self._receive(data)

    def _handshake_read(self, data: memoryview) -> None:
        self.handshake_bytes_in += len(data)
        if self._tls is None:   # 17 us and ~17 KB: not before the first record is whole
            self._first_bytes, whole = gather_first_record(self._first_bytes, data)
            if whole is None:
                return
            data = whole
            self._tls = self._tls_library.session(server_hostname=None)
        if self._slot_backlog:
            self._slot_backlog.append(bytes(data))     # after the bytes that waited
            return
        if self._admission is not None and self.node.turn_budget.exhausted:
            # This turn's admission work is done (transport.turnbudget): wait, unread.
            self._slot_backlog = [bytes(data)]
            self._set_transport_reading(False)
            self.node.turn_budget.defer(self._resume_handshake)
            return
        self._handshake_bytes(data)

    def _handshake_bytes(self, data: memoryview) -> None:
        if not self._has_handshake_slot:
            assert self._admission is not None
            if not self._admission.begin_handshake(self):
                # All handshake slots are busy: keep the bytes, read no more, wait.
                self._slot_backlog = [bytes(data)]
                self._set_transport_reading(False)
                return
            self._has_handshake_slot = True
        elif self._admission is not None:
            self._admission.progress(self)      # a slot holder that is not stalling
        if self.node.tls_pool is not None:
            self._handshake_input(data)
        else:
            self._receive(data)

    def _receive(self, data: memoryview) -> None:
        """Ciphertext in; the plaintext to the peer protocol in one call; then park."""
        feed = self._tls.feed  # type: ignore[union-attr]
        parts: list[bytes] = []
        eof = False
        nbytes = len(data)
        # Feed the session a slice at a time and drain it after each: a memory BIO keeps
        # the capacity of its largest write for good (64 KiB x 5 000 busy peers = 350 MB),
        # while OpenSSL pulls everything it is given into its own record buffer. With no
        # data (a handshake just finished in a thread) read what OpenSSL already holds.
        for start in range(0, nbytes, BIO_SLICE) if nbytes else (0,):
            if nbytes:
                feed(data[start:min(start + BIO_SLICE, nbytes)])
            if self.state == HANDSHAKING and not self._do_handshake():
                if self.state == HANDSHAKING:
                    continue            # the handshake wants more bytes
                return
            if self.state != OPEN:
                return
            part, eof = self._read_plaintext()
            if self.state != OPEN:
                return
            if part:
                parts.append(part)
            if eof:
                break
        peer = self.peer
        if peer is None or self.state != OPEN:
            return
        now = self.loop.time()
        events_before = self.events_received
        plain_bytes = 0
        if parts:
            plain = parts[0] if len(parts) == 1 else b"".join(parts)
            plain_bytes = len(plain)
            if self.stats is not None:
                self.stats.count_received(plain_bytes, now)
            peer.receive_data(plain, now)
        if eof:
            self.close_reason = self.close_reason or "peer closed the session"
            peer.receive_eof(now)
        self._after_protocol_step()
        self._flush_tls()   # TLS output of the reads (and of a handshake's last step)
        if eof and self.state == OPEN:
            self.close("peer closed the session")
        elif self.state == OPEN:
            rate = self.input_rate
            if rate is not None and (plain_bytes or self.events_received != events_before):
                delay = rate.charge(plain_bytes, self.events_received - events_before, now)
                if delay > 0:
                    self._throttle(delay)
                    return
            if self.node.reads.busy:    # else nobody waits for a turn: read on
                self._park()

    def _throttle(self, delay: float) -> None:
        """Over the input caps: read nothing for ``delay`` s (TCP back-pressure), then
        queue for a turn like any parked reader."""
        self._set_transport_reading(False)
        if self._throttle_handle is None:
            self._throttle_handle = self.loop.call_later(delay, self._end_throttle)
            if self.stats is not None:
                self.stats.count_throttled(delay)
            now = self.loop.time()
            if now - self._throttle_logged >= THROTTLE_LOG_INTERVAL and self.input_rate:
                self._throttle_logged = now
                self.input_rate.log_throttled(f"{self.endpoint or self.identity} "
                                              f"{self.address}", delay)

    def _end_throttle(self) -> None:
        self._throttle_handle = None
        if self.state == OPEN and not self._reading_paused:
            self._park()

    @property
    def throttled(self) -> bool:
        """Held back by ``input_rate`` right now."""
        return self._throttle_handle is not None

    # ------------------------------------------------------------------ handshake admission

    def handshake_slot_granted(self) -> None:
        """Admission gave us a handshake slot we waited for (``Admitted`` protocol)."""
        self._has_handshake_slot = True
        self.node.turn_budget.defer(self._resume_handshake)

    def _resume_handshake(self) -> None:
        """Our turn after waiting for a handshake slot or for the turn budget."""
        if self.state != HANDSHAKING:
            return
        backlog, self._slot_backlog = self._slot_backlog, None
        self._set_transport_reading(True)
        self._handshake_bytes(memoryview(b"".join(backlog) if backlog else b""))

    def _leave_admission(self) -> None:
        """Authenticated or gone: no longer an unauthenticated connection."""
        if self._admission is not None:
            admission, self._admission = self._admission, None
            self._slot_backlog = None
            admission.release(self)

    # ------------------------------------------------------------------ handshake in a thread

    def _handshake_input(self, data: memoryview) -> None:
        """Handshake bytes while the node runs handshakes in its TLS threads: OpenSSL
        computes there without the GIL (~0.8 ms of a core per handshake), so a storm uses
        every core. While a step runs, the SSL object and its BIOs belong to that thread:
        new bytes wait here and go in after it."""
        if self._handshake_step is not None:
            if self._handshake_backlog is None:
                self._handshake_backlog = []
            self._handshake_backlog.append(bytes(data))
            return
        self._tls.feed(data)  # type: ignore[union-attr]
        self._start_handshake_step()

    def _start_handshake_step(self) -> None:
        session = self._tls
        assert session is not None          # made by the first whole record
        future = self.loop.run_in_executor(self.node.tls_pool, handshake_step, session)
        self._handshake_step = future
        future.add_done_callback(self._handshake_step_done)

    def _handshake_step_done(self, future: asyncio.Future[BaseException | bool]) -> None:
        self._handshake_step = None
        if future.cancelled() or self.state != HANDSHAKING:
            return                       # closed meanwhile (deadline, shutdown)
        opened = self._handshake_outcome(future.result())
        backlog, self._handshake_backlog = self._handshake_backlog, None
        if self.state == HANDSHAKING:
            if backlog:
                self._tls.feed(b"".join(backlog))  # type: ignore[union-attr]
                self._start_handshake_step()
        elif opened:
            # Bytes that came with or after the peer's last handshake flight (or none:
            # then what OpenSSL already holds).
            self._receive(memoryview(b"".join(backlog) if backlog else b""))

    def _park(self) -> None:
        """Stop reading until the read scheduler gives us our next turn.

        libuv keeps reading a socket (up to 32 reads in one go) unless the protocol
        pauses it, and a loop turn reads every ready socket before anything is written.
        """
        if self._parked or self.state != OPEN or self._throttle_handle is not None:
            return
        self._parked = True
        self._set_transport_reading(False)
        self.node.reads.park(self)

    def unpark(self) -> int:
        """Our turn: read again unless back-pressure holds us (ReadScheduler callback)."""
        self._parked = False
        if self._reading_paused or self.state != OPEN or self._throttle_handle is not None:
            return 0
        self._set_transport_reading(True)
        return max(self._last_read, MIN_EXPECTED_READ)

    def _set_transport_reading(self, on: bool) -> None:
        transport = self.transport
        if on == self._transport_reading or transport is None or transport.is_closing():
            return
        self._transport_reading = on
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def eof_received(self) -> bool:
        if self.peer is not None and self.state == OPEN:
            self.close_reason = self.close_reason or "peer closed the connection"
            self.peer.receive_eof(self.loop.time())
            self._after_protocol_step()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.state
        self.state = CLOSED
        self._cancel_timers()
        self._leave_admission()
        if previous == HANDSHAKING:
            error = exc if exc is not None else ConnectionResetError(
                "connection closed during the TLS handshake")
            self.node.handshake_failed(self, error)
        self._settle_ready(self.close_reason or (str(exc) if exc else "connection closed"))
        if self.peer is not None:
            self.peer.close()
        self.node.connection_lost(self, exc)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.schedule_flush()

    # ------------------------------------------------------------------ TLS pump

    def _do_handshake(self) -> bool:
        """Drive the handshake here; True once it is complete and the session is open."""
        assert self._tls is not None
        return self._handshake_outcome(handshake_step(self._tls))

    def _handshake_outcome(self, outcome: BaseException | bool) -> bool:
        """After a handshake step (here or in a TLS thread): send what it produced; on
        success open the session; True when the session is open.

        On success a server's TLS 1.3 session tickets (``final_output_can_wait``) stay
        buffered until our first write, the Hello: one send per handshake fewer for us
        and one read fewer for the peer, a few percent of a handshake's CPU on each side.
        """
        if outcome is not True:
            self._flush_tls()
            if isinstance(outcome, BaseException):
                self._fail_handshake(outcome)
            return False
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
            self._handshake_handle = None
        self.state = OPEN
        self.opened_at = self.loop.time()
        self._leave_admission()
        # (checked before the node may close the session, which flushes)
        self._hold_output = self._tls.final_output_can_wait()  # type: ignore[union-attr]
        if not self.node.handshake_done(self):
            return False
        return self.state == OPEN

    def _fail_handshake(self, exc: BaseException) -> None:
        self.state = CLOSING
        self._leave_admission()
        self.node.handshake_failed(self, exc)
        self._settle_ready(f"TLS handshake failed: {exc}")
        if self.transport is not None:
            self.transport.close()

    def _on_handshake_timeout(self) -> None:
        self._handshake_handle = None
        if self._admission is None:
            self._expire_handshake()
        else:                               # inbound: a flood's deadlines pass together
            self._admission.expire_soon(self._expire_handshake)

    def _expire_handshake(self) -> None:
        if self.state == HANDSHAKING:       # (it may have finished while it waited)
            self._fail_handshake(TimeoutError(
                f"TLS handshake not finished within {self._handshake_timeout:g} s"))
            if self.transport is not None:
                self.transport.abort()

    def _read_plaintext(self) -> tuple[bytes, bool]:
        """Everything the TLS layer can decrypt now, and whether the peer sent close_notify."""
        assert self._tls is not None
        chunks: list[bytes] = []
        eof = False
        read = self._tls.read
        while True:
            try:
                chunk = read(READ_CHUNK)
            except ssl.SSLError as exc:
                if self.peer is not None and self.peer.messages_received == 0 \
                        and self.peer.bytes_received == 0:
                    # TLS 1.3: a client's do_handshake() succeeds before the server has
                    # checked its certificate; a rejection arrives as the first record.
                    self.node.handshake_failed(self, exc)
                else:
                    self.node.log_peer(self, logging.WARNING, "TLS error, closing: %s", exc)
                self.abort(f"TLS error: {exc}")
                return b"", False
            if chunk is None:
                break
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        # Reading can produce TLS output (TLS 1.3 key updates, alerts): _receive sends it
        # after the protocol step, with whatever that writes.
        if len(chunks) == 1:
            return chunks[0], eof
        return b"".join(chunks), eof

    def _flush_tls(self) -> None:
        if self._tls is None or self._hold_output:
            return
        out = self._tls.pull_output()
        if out and self.transport is not None and not self.transport.is_closing():
            if self.state == HANDSHAKING:
                self.handshake_bytes_out += len(out)
            self.transport.write(out)

    def _write_plain(self, data: bytes) -> None:
        """Encrypt and write; the session may accept less than all (partial writes)."""
        session = self._tls
        if session is None or self.transport is None or self.transport.is_closing():
            return
        view = memoryview(data)
        while view:
            try:
                written = session.write(view)
            except ssl.SSLError as exc:
                self.abort(f"TLS write failed: {exc}")
                return
            view = view[written:]
        if self.stats is not None:
            self.stats.count_sent(len(data), self.loop.time())
        self._hold_output = False
        self._flush_tls()

    # ------------------------------------------------------------------ session

    def start_session(self, peer: PeerProtocol, queue: SendQueue, endpoint: str | None,
                      stats: StatsT) -> None:
        """Called by the node once it accepted the TLS peer."""
        self.peer = peer
        self.queue = queue
        self.endpoint = endpoint
        self.stats = stats
        self._after_protocol_step()
        self._settle_ready(None)
        # (Data that came with the handshake's end: read by the call that completed it.)

    def _after_protocol_step(self) -> None:
        peer = self.peer
        if peer is None:
            return
        control = peer.data_to_send()
        if control:
            self._write_plain(control[0] if len(control) == 1 else b"".join(control))
        events = peer.events_received()
        if events:
            self.events_received += len(events)
            self.node.on_events(self, events)
        if peer.state == State.CLOSED and self.state == OPEN:
            reason = self.close_reason or "protocol closed"
            if events and any(type(event) is PeerTimedOut for event in events):
                self.abort(reason)      # silent: it reads nothing either (see CLOSE_GRACE)
            else:
                self.close(reason)
            return
        self._arm_timer()

    def _arm_timer(self) -> None:
        peer = self.peer
        if peer is None or self.state != OPEN:
            return
        when = peer.get_timer()
        if when is None:
            return
        # Re-arm only when the new deadline is earlier: a timer that fires early is
        # harmless (handle_timer is idempotent) and saves a TimerHandle per read.
        if self._timer is not None and self._timer_when is not None and self._timer_when <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        if self.peer is None or self.state != OPEN:
            return
        now = self.loop.time()
        if self.reading_paused or self._parked:
            # We hold its input back: what it sent waits unread, it is not silent.
            self.peer.reading_held(now)
        self.peer.handle_timer(now)
        self._after_protocol_step()

    # ------------------------------------------------------------------ writing

    def schedule_flush(self) -> None:
        if not self._flush_scheduled and self.state == OPEN:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        queue = self.queue
        if queue is not None and queue.bytes >= FLUSH_CHUNK and not self._writing_paused:
            # A full chunk waits: write it now, not at the end of the turn, which may bring
            # megabytes more input (the queue reached high water, coalescing, although
            # the peer read as fast as we wrote).
            self._write_queued()

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_queued()

    def _write_queued(self) -> None:
        queue = self.queue
        if queue is None or self.state != OPEN:
            return
        while queue.messages and not self._writing_paused and self.state == OPEN:
            frames, methods = queue.take(FLUSH_CHUNK, self.ledger)
            if not frames:
                break
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            self._write_plain(data)
            self.last_write_progress = self.loop.time()
            self.node.on_sent(self, len(data), methods)
        if queue.update_congestion():
            self.node.queue_drained(self)

    def write_direct(self, frame: bytes) -> None:
        """Write a frame now, ahead of the queue (answers and direct sends are small)."""
        if self.state == OPEN:
            self._write_plain(frame)

    @property
    def write_buffer_size(self) -> int:
        if self.transport is None or self.transport.is_closing():
            return 0
        return self.transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        """Back-pressure: stop reading until ``resume_reading``."""
        if not self._reading_paused:
            self._reading_paused = True
            self._set_transport_reading(False)

    def resume_reading(self) -> None:
        """Back-pressure released: queue for a turn to read (see ``transport.readsched``)."""
        if self._reading_paused:
            self._reading_paused = False
            if self.peer is not None:
                self.peer.reading_held(self.loop.time())   # its silence was ours
            self._park()

    @property
    def expected_read(self) -> int:
        """The bytes this connection's next read is expected to bring (its last read, at
        least ``MIN_EXPECTED_READ``), as the read scheduler assumes."""
        return max(self._last_read, MIN_EXPECTED_READ)

    @property
    def reading_paused(self) -> bool:
        """Not reading because back-pressure or the input caps hold it back."""
        return self._reading_paused or self._throttle_handle is not None

    @property
    def parked(self) -> bool:
        return self._parked

    def unread_bytes(self) -> int:
        """Input waiting in the kernel's receive buffer (FIONREAD; 0 when unknown)."""
        return unread_bytes(self.transport)

    def restart_reading(self) -> None:
        """Read again although our bookkeeping says we already should (the node's
        read-stall watchdog): transport reading on, and whatever the TLS session holds
        handed on now."""
        if self.state != OPEN or self._reading_paused:
            return
        self._parked = False
        self._transport_reading = False
        self._set_transport_reading(True)
        self._receive(memoryview(b""))

    # ------------------------------------------------------------------ closing

    def close(self, reason: str) -> None:
        """Graceful close: TLS close_notify after what is already written, then FIN."""
        if self.state in (CLOSING, CLOSED):
            return
        self._begin_close(reason)
        # (not while a TLS thread runs a handshake step on the SSL object)
        if self._tls is not None and self._handshake_step is None:
            self._tls.close_notify()  # queued; no need to wait for the peer's answer
            self._hold_output = False
            self._flush_tls()
        if self.transport is not None:
            self.transport.close()
            # in the protocol timer's slot: connection_lost cancels it (_cancel_timers)
            self._timer = self.loop.call_later(CLOSE_GRACE, self.abort, "close timed out")

    def fileno(self) -> int:
        """The socket's descriptor (-1: none; ``router.transport.sockinfo``)."""
        return transport_fileno(self.transport)

    def abort(self, reason: str) -> None:
        """Hard close: drop whatever is buffered."""
        if self.state == CLOSED:
            return
        self._begin_close(reason)
        if self.transport is not None:
            self.transport.abort()

    def _begin_close(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        self.state = CLOSING
        self._cancel_timers()
        if self.peer is not None:
            self.peer.close()

    def _cancel_timers(self) -> None:
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
            self._handshake_handle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_when = None
        if self._throttle_handle is not None:
            self._throttle_handle.cancel()
            self._throttle_handle = None

    def peer_certificate_der(self) -> bytes | None:
        if self._tls is None or self.state == HANDSHAKING:
            return None
        return self._tls.peer_certificate_der()

    def peer_identity(self) -> str | None:
        """Certificate CN of the peer (call once the handshake is complete)."""
        return None if self._tls is None else self._tls.peer_identity()

    def __repr__(self) -> str:
        who = self.endpoint or self.identity or "?"
        return f"<PeerConnection {who} {self.direction} {self.address} {self.state}>"
