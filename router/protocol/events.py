"""Events that :class:`router.protocol.peer.PeerProtocol` hands to its owner.

The peer state machine does no I/O; what it learns from the bytes and the clock comes out
as these immutable values, drained with ``PeerProtocol.events_received()`` in the order
they happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from router.errors import ProtocolError
from router.protocol.jsonrpc import Message

__all__ = [
    "Event",
    "HelloReceived",
    "MessageReceived",
    "NotJsonRpc",
    "PeerTimedOut",
    "ProtocolFailed",
]


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The peer sent ``icinga::Hello``.

    ``version`` is major*10000 + minor*100 + patch (21306 for 2.13.6) and
    ``capabilities`` a bit mask (bit 0: ExecuteArbitraryCommand); both are 0 when
    missing or unusable. Icinga stores them on the Endpoint and negotiates nothing.
    """

    version: int
    capabilities: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """Any message other than ``icinga::Hello`` and ``event::Heartbeat``."""

    message: Message


@dataclass(frozen=True, slots=True)
class PeerTimedOut:
    """A deadline closed the connection.

    ``reason`` is ``"liveness"`` (nothing received for the liveness timeout),
    ``"anonymous"`` (an unauthenticated peer outlived its anonymous or enrollment
    allowance) or ``"first_byte"`` (server role: the client never sent a byte).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolFailed:
    """The peer broke the framing or sent an unusable payload; the connection is closed."""

    error: ProtocolError


@dataclass(frozen=True, slots=True)
class NotJsonRpc:
    """Server role: the first byte was not a digit, so this is not a JSON-RPC client.

    Icinga serves HTTP on the same port in that case; ``first_bytes`` is the whole first
    chunk of plaintext received, for logging or for handing the connection elsewhere.
    """

    first_bytes: bytes


Event: TypeAlias = HelloReceived | MessageReceived | PeerTimedOut | ProtocolFailed | NotJsonRpc
