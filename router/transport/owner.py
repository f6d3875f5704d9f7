"""What the transport needs from the node above it, as ``typing.Protocol`` s.

The transport calls back into its owner (the node) when a connection opens, identifies its
peer, receives protocol events, writes, drains and closes; the dialler asks it whether an
endpoint has a session. These classes name exactly the members used, so the transport is
typed against them and never imports ``router.node``.

Both owner protocols are generic in the connection type (``PeerConnection[S]`` for the
node's per-endpoint stats type ``S``) so this module need not import ``connection``, which
imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from router.protocol.events import Event
from router.transport.readsched import ReadScheduler
from router.transport.turnbudget import TurnBudget

ConnT_contra = TypeVar("ConnT_contra", contravariant=True)
ConnT_co = TypeVar("ConnT_co", covariant=True)


class TrafficStats(Protocol):
    """What a connection counts into its endpoint's stats (the node's ``EndpointStats``):
    plaintext bytes, once per read or write (not per message), at loop time ``now``."""

    def count_received(self, nbytes: int, now: float) -> None: ...

    def count_sent(self, nbytes: int, now: float) -> None: ...

    def count_throttled(self, seconds: float) -> None:
        """The session stopped reading for ``seconds`` (its input caps, peerrate)."""


class RateLimitedLogger(Protocol):
    """A log that writes at most one line per key and interval (the node's RateLimitedLog)."""

    def log(self, key: Any, level: int, msg: str, *args: Any,
            now: float | None = None) -> None: ...


class ConnectionOwner(Protocol[ConnT_contra]):
    """What a ``PeerConnection`` (``ConnT_contra``) needs from the node that owns it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def read_buffer(self) -> memoryview:
        """The one buffer every connection reads into (BufferedProtocol)."""

    @property
    def tls_pool(self) -> Executor | None:
        """Threads for TLS handshake steps (None: in the loop thread)."""

    @property
    def reads(self) -> ReadScheduler: ...

    @property
    def turn_budget(self) -> TurnBudget:
        """Bounds the loop time one turn spends on connections not yet sessions."""

    def connection_made(self, conn: ConnT_contra) -> None: ...

    def handshake_failed(self, conn: ConnT_contra, exc: BaseException) -> None: ...

    def handshake_done(self, conn: ConnT_contra) -> bool:
        """Identify the peer and start its session; False when the connection was closed."""

    def connection_lost(self, conn: ConnT_contra, exc: Exception | None) -> None: ...

    def on_events(self, conn: ConnT_contra, events: list[Event]) -> None: ...

    def on_sent(self, conn: ConnT_contra, nbytes: int, methods: list[str]) -> None: ...

    def queue_drained(self, conn: ConnT_contra) -> None:
        """``conn``'s send queue fell below its low-water mark."""

    def log_peer(self, conn: ConnT_contra, level: int, msg: str, *args: Any) -> None: ...


class DialOwner(Protocol[ConnT_co]):
    """What the ``Connector`` needs from the node it dials for."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def closing(self) -> bool: ...

    @property
    def connections(self) -> Collection[str]:
        """Names of the endpoints that have a session."""

    @property
    def ratelog(self) -> RateLimitedLogger: ...

    def new_outbound(self, endpoint: str) -> ConnT_co:
        """A connection (asyncio protocol) that dials ``endpoint``."""

    def wait_session_closed(self, endpoint: str) -> asyncio.Future[None]: ...


__all__ = ["ConnectionOwner", "DialOwner", "RateLimitedLogger", "TrafficStats"]
