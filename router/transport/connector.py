"""Outbound connections: one dialler task per endpoint we are supposed to reach.

Icinga retries every endpoint on a fixed 10 s timer, so after a master restart thousands
of agents come back in lock-step (users.md P3/P12 and #6234). Here each endpoint has its
own task with exponential backoff and *full jitter* (a uniform delay between 0 and the
current cap), a shared semaphore caps concurrent dials (TCP connect + TLS handshake), and
an endpoint with several addresses is tried address by address before backing off
(users.md P22: Icinga has only one host per endpoint).

A dialler only dials while the endpoint has no session: when the peer connected to us
first, the task waits for that session to end.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from router.routing import EndpointSpec
    from router.transport.connection import PeerConnection
    from router.transport.owner import DialOwner

log = logging.getLogger("router.connector")

#: A session that lasted at least this long resets the backoff.
STABLE_SESSION = 30.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

    minimum: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0

    def cap(self, attempt: int) -> float:
        # The exponent is bounded: factor ** 1024 overflowed after ~8.5 hours of a dead
        # peer at 1 s / 60 s, and the endpoint was never dialled again (review).
        return min(self.maximum, self.minimum * self.factor ** min(max(0, attempt), 64))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Delay before retry number ``attempt`` (0-based): uniform in [min/2, cap]."""
        cap = self.cap(attempt)
        low = min(self.minimum / 2, cap)
        return low + (cap - low) * rand()


class Connector:
    """Keeps one outbound session per dial target of the node.

    ``node`` is typed by what the dialler needs (``DialOwner``); it never looks at the
    connections' stats, hence ``PeerConnection[Any]``.
    """

    def __init__(self, node: DialOwner[PeerConnection[Any]], targets: tuple[EndpointSpec, ...],
                 *, backoff: Backoff, concurrency: int, connect_timeout: float) -> None:
        self.node = node
        self.targets = targets
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        self._tasks: list[asyncio.Task[None]] = []
        #: Attempts and failures per endpoint, for the status page and tests.
        self.attempts: dict[str, int] = {}
        self.failures: dict[str, int] = {}

    def start(self) -> None:
        for spec in self.targets:
            self._tasks.append(asyncio.ensure_future(self._run(spec)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()

    async def _run(self, spec: EndpointSpec) -> None:
        node = self.node
        attempt = 0
        first = True
        while not node.closing:
            if spec.name in node.connections:
                await node.wait_session_closed(spec.name)
                continue
            if not first:
                delay = self.backoff.delay(attempt)
                log.debug("next dial to %s in %.1f s (attempt %d)", spec.name, delay, attempt + 1)
                await asyncio.sleep(delay)
                if spec.name in node.connections or node.closing:
                    continue
            first = False
            started = node.loop.time()
            if await self._dial(spec):
                await node.wait_session_closed(spec.name)
                attempt = 0 if node.loop.time() - started >= STABLE_SESSION else attempt + 1
            else:
                attempt += 1

    async def _dial(self, spec: EndpointSpec) -> bool:
        """Try each address once; True when a session was established."""
        node = self.node
        for host, port in spec.addresses:
            if spec.name in node.connections or node.closing:
                return spec.name in node.connections
            self.attempts[spec.name] = self.attempts.get(spec.name, 0) + 1
            async with self._semaphore:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        await self._connect(spec.name, host, port)
                    return True
                except asyncio.CancelledError:
                    raise
                except (OSError, ConnectionError, asyncio.TimeoutError, UnicodeError,
                        ValueError) as exc:
                    # UnicodeError: a host name the validator took that IDNA cannot
                    # encode (a label over 63 characters, "a..b"): it killed the dial task,
                    # and with it stop() and the next reload (review).
                    self.failures[spec.name] = self.failures.get(spec.name, 0) + 1
                    text = str(exc) or type(exc).__name__
                    if isinstance(exc, asyncio.TimeoutError):
                        text = f"no session within {self.connect_timeout:g} s"
                    node.ratelog.log(("dial", spec.name, host, port), logging.WARNING,
                                     "[%s %s:%s] cannot connect: %s", spec.name, host, port,
                                     text)
        return False

    async def _connect(self, name: str, host: str, port: int) -> None:
        node = self.node
        transport, conn = await node.loop.create_connection(
            lambda: node.new_outbound(name), host, port)
        try:
            await conn.ready
        except asyncio.CancelledError:
            # Cancelled (a reload replacing the dialler) after the handshake registered
            # the session: it is not the dialler's to end (review).
            if not (conn.ready.done() and name in node.connections):
                transport.abort()
            raise
        except BaseException:
            transport.abort()
            raise
