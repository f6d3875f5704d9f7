"""The per-connection state machine of the Icinga 2 cluster protocol, without any I/O.

Theory of operation
===================

A :class:`PeerProtocol` is created by the transport once the TLS handshake is done and
the peer's identity is known. From then on it is driven by three inputs and drained
through two outputs; it never reads a clock, touches a socket or starts a timer itself:

* ``receive_data(plain, now)`` feeds decrypted bytes; ``receive_eof(now)`` reports that
  the peer closed the stream;
* ``handle_timer(now)`` is called at (or after, or harmlessly before) the deadline that
  ``get_timer()`` announced;
* ``events_received()`` returns what happened (:mod:`router.protocol.events`) and
  ``data_to_send()`` the control frames (Hello, Heartbeat) to write, already framed.
  The transport writes those before any queued bulk traffic, so a heartbeat never waits
  behind a congested relay queue.

States::

    CLIENT   OPEN at construction (our Hello queued)
    SERVER   WAITING --first byte is a digit--> OPEN (our Hello queued)
             WAITING --any other first byte--> CLOSED (NotJsonRpc)
    both     --protocol error, close deadline, EOF or close()--> CLOSED

What it copies from Icinga 2.13.6 (``lib/remote/apilistener.cpp`` NewClientHandlerInternal,
``lib/remote/jsonrpcconnection*.cpp``):

* **Opening.** The client role sends ``icinga::Hello`` immediately. The server role
  waits for the first byte: an ASCII digit means JSON-RPC, so it answers with its own
  Hello; anything else means HTTP, which this router does not serve on the cluster
  port (:class:`~router.protocol.events.NotJsonRpc`, then closed). Icinga's
  ``connect_timeout`` (15 s) also bounds that wait (``first_byte``).
* **Heartbeat.** ``event::Heartbeat`` with empty params every 20 s, the first one
  20 s after the connection opened. If the timer is served late, one heartbeat is
  sent and the next is scheduled from that moment (no burst to catch up).
* **Liveness.** Icinga drops a connection that has not delivered a single byte for
  60 s (the TLS stream updates "seen" on every read, so partial frames count too).
  Here the deadline is exact rather than sampled every 30 s, and it applies to every
  peer (for an anonymous one the anonymous deadline below always comes first).
* **Anonymous peers.** A peer that is not an authenticated, known endpoint is closed
  10 s after the start, as Icinga does. Deliberate extension: a peer that sends
  ``pki::RequestCertificate`` is *enrolling* and may stay until ``enrollment_timeout``
  after the start, so a certificate request relayed to a slow signer can be answered
  on the same connection.
* **Messages.** ``icinga::Hello`` becomes :class:`~router.protocol.events.HelloReceived`
  and ``event::Heartbeat`` is swallowed (its Icinga handler does nothing); every other
  message, including ones without a ``method``, becomes
  :class:`~router.protocol.events.MessageReceived` for the node to route or drop.
* **Errors.** Icinga handles each message before it reads the next one, and a broken
  frame or an unparsable payload ends the read loop and disconnects without a reply.
  Therefore the messages that precede the error in the same read are delivered first,
  in order, then :class:`~router.protocol.events.ProtocolFailed` is emitted, the
  state becomes CLOSED and the rest of the read is discarded. Nothing is raised out of
  ``receive_data``. An EOF in the middle of a frame is a failed read in Icinga too,
  so it is reported the same way; an EOF between frames just closes.
* **Metrics.** ``messages_received`` counts parsed messages (Hello and Heartbeat
  included) and ``bytes_received`` every byte fed in, framing and partial frames
  included, like the "sent" side of Icinga's endpoint statistics.

When a deadline closes the connection, :class:`~router.protocol.events.PeerTimedOut`
is emitted. After CLOSED, input is ignored, timers are off, and the two drain methods
keep returning whatever was still pending (then nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Final

from router.errors import FramingError, InvalidMessage, ProtocolError
from router.protocol import netstring
from router.protocol.events import (
    Event,
    HelloReceived,
    MessageReceived,
    NotJsonRpc,
    PeerTimedOut,
    ProtocolFailed,
)
from router.protocol.jsonrpc import Message, notification, parse_message

__all__ = [
    "DEFAULT_HELLO_PARAMS",
    "HEARTBEAT_FRAME",
    "PeerProtocol",
    "Role",
    "State",
]

HELLO_METHOD: Final = "icinga::Hello"
HEARTBEAT_METHOD: Final = "event::Heartbeat"
REQUEST_CERTIFICATE_METHOD: Final = "pki::RequestCertificate"

DEFAULT_HELLO_PARAMS: Final[Mapping[str, Any]] = MappingProxyType(
    {"version": 21306, "capabilities": 1})
"""What Icinga 2.13.6 announces: version 2*10000 + 13*100 + 6, capability bit 0."""

HEARTBEAT_FRAME: Final = netstring.encode(notification(HEARTBEAT_METHOD, {}))
"""The framed heartbeat, byte-identical to Icinga's; it never changes, so built once."""

_DIGITS: Final = frozenset(b"0123456789")


class Role(IntEnum):
    """Which side dialled: the CLIENT speaks first, the SERVER waits for a byte."""

    CLIENT = 0
    SERVER = 1


class State(IntEnum):
    """WAITING: server role before the first byte; OPEN: JSON-RPC; CLOSED: done."""

    WAITING = 0
    OPEN = 1
    CLOSED = 2


class PeerProtocol:
    """Sans-I/O cluster connection: framing, Hello, heartbeat and the close deadlines.

    ``identity`` is the peer's certificate CN (None without one) and ``authenticated``
    whether it is a verified, known endpoint. ``max_message_size`` is the netstring
    limit (negative: only the 9-digit ceiling, Icinga's setting for known endpoints;
    Icinga gives anonymous peers 1 MiB). All times are absolute seconds on the caller's
    clock, as passed in ``now``.
    """

    __slots__ = (
        "role", "identity", "authenticated", "started", "state", "last_received",
        "remote_version", "remote_capabilities", "enrolling",
        "messages_received", "bytes_received",
        "_decoder", "_max_depth", "_hello_params", "_events", "_outgoing",
        "_heartbeat_interval", "_liveness_timeout", "_enrollment_timeout",
        "_next_heartbeat", "_first_byte_deadline", "_anonymous_deadline",
        "_liveness_floor",
    )

    def __init__(self, role: Role, now: float, *, identity: str | None, authenticated: bool,
                 max_message_size: int, max_depth: int = 128,
                 hello_params: Mapping[str, Any] = DEFAULT_HELLO_PARAMS,
                 heartbeat_interval: float = 20.0, liveness_timeout: float = 60.0,
                 anonymous_timeout: float = 10.0, enrollment_timeout: float = 60.0,
                 first_byte_timeout: float = 15.0) -> None:
        self.role = role
        self.identity = identity
        self.authenticated = authenticated
        self.started = now
        self.state = State.WAITING
        self.last_received = now
        #: The liveness window starts no earlier than this (``reading_held``).
        self._liveness_floor = now
        self.remote_version: int | None = None
        self.remote_capabilities: int | None = None
        self.enrolling = False
        self.messages_received = 0
        self.bytes_received = 0
        self._decoder = netstring.NetstringDecoder(max_message_size)
        self._max_depth = max_depth
        # Kept as given (the node passes one mapping for every peer) and encoded when the
        # Hello is sent; the event and output lists are made when there is something to
        # put in them. Per idle connection that is 0.2 KB less (issue 14's RSS bound).
        self._hello_params = hello_params
        self._events: list[Event] | None = None
        self._outgoing: list[bytes] | None = None
        self._heartbeat_interval = heartbeat_interval
        self._liveness_timeout = liveness_timeout
        self._enrollment_timeout = enrollment_timeout
        self._next_heartbeat: float | None = None
        self._first_byte_deadline: float | None = None
        self._anonymous_deadline = None if authenticated else now + anonymous_timeout
        if role == Role.CLIENT:
            self._open(now)
        else:
            self._first_byte_deadline = now + first_byte_timeout

    # -- configuration -----------------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        """The netstring payload limit; settable, it takes effect on the next header."""
        return self._decoder.max_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self._decoder.max_size = value

    # -- inputs ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Consume decrypted bytes from the peer; results come out as events.

        Every byte counts for liveness, even a partial frame. A protocol error closes
        the connection after the messages that preceded it in ``data`` were delivered.
        """
        if self.state == State.CLOSED or not data:
            return
        self.bytes_received += len(data)
        self.last_received = now
        if self.state == State.WAITING and not self._accept_first_byte(data, now):
            return
        payloads: list[bytes] = []
        failure: ProtocolError | None = None
        try:
            self._decoder.feed_into(data, payloads)
        except ProtocolError as error:
            failure = error
        for payload in payloads:
            try:
                message = parse_message(payload, self._max_depth)
            except InvalidMessage as error:
                failure = error
                break
            self.messages_received += 1
            self._dispatch(message)
        if failure is not None:
            self._fail(failure)

    def reading_held(self, now: float) -> None:
        """We are not reading the peer's input (back-pressure from a congested queue,
        the input caps, waiting for a read turn): its silence meanwhile is ours, not a
        sign that it is gone. The liveness window starts again at ``now``.

        Without it a satellite whose parent is slow held its agents' reading back for
        longer than the liveness timeout and then closed them as silent, although their
        results sat unread in its own socket buffers (issue 22, the 10 000-agent chain).
        """
        if now > self._liveness_floor:
            self._liveness_floor = now

    def receive_eof(self, now: float) -> None:
        """The peer closed its side: the connection is over.

        A frame cut off by the EOF is reported as ``ProtocolFailed`` (Icinga's reader
        fails with a read error in that case); a clean EOF between frames emits nothing.
        """
        if self.state == State.CLOSED:
            return
        buffered = self._decoder.buffered
        if buffered:
            self._fail(FramingError(f"connection closed inside a frame "
                                    f"({buffered} bytes of it received)"))
        else:
            self.close()

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due at ``now``: a close deadline first, else a heartbeat.

        Idempotent and safe to call early: nothing happens before a deadline.
        """
        if self.state == State.CLOSED:
            return
        reason = self._expired_deadline(now)
        if reason is not None:
            self._emit(PeerTimedOut(reason))
            self.close()
            return
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            self._send(HEARTBEAT_FRAME)
            self._next_heartbeat = now + self._heartbeat_interval

    def close(self) -> None:
        """Local close: state CLOSED, timers off. Pending output stays drainable."""
        self.state = State.CLOSED
        self._next_heartbeat = None
        self._first_byte_deadline = None
        self._anonymous_deadline = None

    # -- outputs -----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next absolute time ``handle_timer`` has something to do, or None."""
        if self.state == State.CLOSED:
            return None
        deadlines = [deadline for deadline, _ in self._deadlines()]
        if self._next_heartbeat is not None:
            deadlines.append(self._next_heartbeat)
        return min(deadlines)

    def events_received(self) -> list[Event]:
        """Hand over the events gathered since the last call, oldest first."""
        events, self._events = self._events, None
        return events if events is not None else []

    def data_to_send(self) -> list[bytes]:
        """Hand over the framed control messages (Hello, Heartbeat) to write, in order."""
        frames, self._outgoing = self._outgoing, None
        return frames if frames is not None else []

    # -- internals ---------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def _send(self, frame: bytes) -> None:
        if self._outgoing is None:
            self._outgoing = [frame]
        else:
            self._outgoing.append(frame)

    def _open(self, now: float) -> None:
        """Enter OPEN: queue our Hello and start the heartbeat cadence from ``now``."""
        self.state = State.OPEN
        self._first_byte_deadline = None
        self._send(netstring.encode(notification(HELLO_METHOD, dict(self._hello_params))))
        self._next_heartbeat = now + self._heartbeat_interval

    def _accept_first_byte(self, data: bytes, now: float) -> bool:
        """Server role: decide JSON-RPC or not from the first byte, like Icinga's peek."""
        if data[0] in _DIGITS:
            self._open(now)
            return True
        self._emit(NotJsonRpc(bytes(data)))
        self.close()
        return False

    def _dispatch(self, message: Message) -> None:
        """Turn one parsed message into an event, consuming the connection-level ones."""
        method = message.method
        if method == HEARTBEAT_METHOD:
            return
        if method == HELLO_METHOD:
            self._receive_hello(message.params)
            return
        if method == REQUEST_CERTIFICATE_METHOD and not self.authenticated:
            self._start_enrollment()
        events = self._events
        if events is None:
            self._events = [MessageReceived(message)]
        else:
            events.append(MessageReceived(message))

    def _receive_hello(self, params: dict[str, Any] | None) -> None:
        version = _hello_number(params, "version")
        capabilities = _hello_number(params, "capabilities")
        self.remote_version = version
        self.remote_capabilities = capabilities
        self._emit(HelloReceived(version, capabilities))

    def _start_enrollment(self) -> None:
        """Give an anonymous peer asking for a certificate time to get the answer."""
        self.enrolling = True
        if self._anonymous_deadline is not None:
            self._anonymous_deadline = max(self._anonymous_deadline,
                                           self.started + self._enrollment_timeout)

    def _fail(self, error: ProtocolError) -> None:
        self._emit(ProtocolFailed(error))
        self.close()

    def _deadlines(self) -> list[tuple[float, str]]:
        """The close deadlines currently armed, each with its ``PeerTimedOut`` reason."""
        silent_since = max(self.last_received, self._liveness_floor)
        deadlines = [(silent_since + self._liveness_timeout, "liveness")]
        if self._anonymous_deadline is not None:
            deadlines.append((self._anonymous_deadline, "anonymous"))
        if self._first_byte_deadline is not None:
            deadlines.append((self._first_byte_deadline, "first_byte"))
        return deadlines

    def _expired_deadline(self, now: float) -> str | None:
        """The reason of the earliest close deadline that ``now`` has reached, if any."""
        expired = [(deadline, reason) for deadline, reason in self._deadlines()
                   if now >= deadline]
        return min(expired)[1] if expired else None


def _hello_number(params: dict[str, Any] | None, key: str) -> int:
    """``params[key]`` as a non-negative integer, 0 when missing or not a usable number.

    Icinga stores whatever number it gets and treats version 0 as "older than 2.13";
    0 is the neutral value for anything that is not a finite, non-negative number.
    """
    value = params.get(key) if params is not None else None
    if type(value) is int:
        return value if value >= 0 else 0
    if type(value) is float and 0 <= value < float("inf"):
        return int(value)
    return 0
