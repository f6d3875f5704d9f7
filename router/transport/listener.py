"""The cluster listener: at most a few accepts per loop turn.

Why not ``loop.create_server``: libuv accepts every connection waiting in the backlog
in one loop turn, and uvloop makes a transport and a protocol for each before anything
else runs: under a connection flood (up to a couple of hundred queued at a time) the
honest agents' reads wait behind all of them. Here the listening socket is polled like
any peer's; each time it is ready we accept at most ``per_turn`` connections and leave
the rest in the kernel's backlog for the next turn, so accepts interleave with the
reads and writes of established sessions. Measured against a node with the same
changes otherwise (a 1 ms timer's delays over 2 ms, summed over a 5 s flood of TLS
connect/close loops): 92 and 54 ms against 106 and 85 ms; no difference for bare TCP
connect/close loops. A modest gain, not the cure of the flood latencies (issue 21).

A connection whose peer has already closed or reset it without sending a byte (a
connect/close flood) is closed right after ``accept``: one ``recv(MSG_PEEK)`` tells, and
it costs no transport, protocol, handshake deadline or teardown (counted in
``rejected``). Against bare connect/close loops (node pinned to a core) that was 5 936
of 51 231 connections, the others still connected when accepted, and the node's CPU per
churned connection went from 68-81 to 62-63 µs (two runs each).

Every other accepted connection goes to the owner's lobby (``router.transport.lobby``)
when there is one: it gets its transport and protocol once its first TLS record is whole
(:meth:`Listener.hand_over`), so a flood of connections that never send one costs a
socket and a small entry each.

Out of descriptors (``EMFILE``/``ENFILE``) or kernel memory, ``accept`` fails while the
backlog stays readable: the listener stops polling for ``ERROR_PAUSE`` seconds instead
of spinning on it (counted, logged through the node's rate-limited log, established
sessions untouched). The node refuses newcomers before it gets there
(``Sessions.fd_ceiling``); this is the last line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:  # pragma: no cover
    from router.transport.lobby import Lobby
    from router.transport.owner import RateLimitedLogger
    from router.transport.turnbudget import TurnBudget

log = logging.getLogger("router.transport")

#: Connections accepted per listening socket and loop turn. 16 accepts cost well under
#: a millisecond, and under load a turn comes every millisecond or so: ~16 000 accepts a
#: second, far above the node's TLS handshake rate (about 1 100 a second a core).
ACCEPTS_PER_TURN = 16

#: Seconds the listener stops accepting after an error that a retry cannot cure at once.
ERROR_PAUSE = 0.5

#: accept() errors that mean "no descriptors or memory right now": pause, do not spin.
RESOURCE_ERRNOS = {errno.EMFILE: "emfile", errno.ENFILE: "enfile",
                   errno.ENOBUFS: "enobufs", errno.ENOMEM: "enomem"}


class WaitedInLobby(Protocol):
    """A protocol the lobby hands a connection to, with what the lobby read of it."""

    def first_bytes_waited(self, data: bytes, accepted_at: float) -> None: ...


class Listener:
    """Listening sockets for ``host:port`` whose accepted connections get protocols from
    ``protocol_factory`` (as ``loop.create_server`` would)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 protocol_factory: Callable[[], asyncio.BaseProtocol], *,
                 ratelog: RateLimitedLogger, backlog: int = 4096,
                 per_turn: int = ACCEPTS_PER_TURN, budget: TurnBudget | None = None) -> None:
        self.loop = loop
        self.protocol_factory = protocol_factory
        #: The node's log of at most one line per key and interval: a flood of accept
        #: failures must not flood the log.
        self.ratelog = ratelog
        self.backlog = backlog
        self.per_turn = max(1, per_turn)
        #: The node's bound on admission work per loop turn (None: only ``per_turn``).
        self.budget = budget
        self.sockets: list[socket.socket] = []
        #: accept() failures by reason ("emfile", "econnaborted", ...)
        self.errors: dict[str, int] = {}
        #: connections closed at accept, by reason ("closed_before_data": the peer had
        #: closed or reset it before sending a byte)
        self.rejected: dict[str, int] = {}
        #: connections whose transport could not be set up (closed at once)
        self.attach_failures = 0
        #: Accepted connections wait here for their first TLS record (None: they get
        #: their protocol at once; ``router.transport.lobby``). Set by the owner.
        self.lobby: Lobby | None = None
        self._paused: set[socket.socket] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def start(self, host: str | None, port: int) -> None:
        """Bind and listen on every address ``host`` resolves to (all when None)."""
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                            flags=socket.AI_PASSIVE)
        seen: set[tuple[Any, ...]] = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    where = f"{address[0]!s}:{address[1]!r}"   # AF_INET(6): (host, port, ..)
                    raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}"
                                  ) from None
                sock.listen(self.backlog)
                sock.setblocking(False)
        except OSError:
            for sock in self.sockets:
                sock.close()
            self.sockets = []
            raise
        self.serve(self.sockets)

    def serve(self, sockets: list[socket.socket]) -> None:
        """Accept on ``sockets`` (listening, non-blocking; ``start`` binds its own)."""
        for sock in sockets:
            if sock not in self.sockets:
                self.sockets.append(sock)
            self.loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _on_readable(self, sock: socket.socket) -> None:
        budget = self.budget
        for i in range(self.per_turn):
            if budget is None:
                if not self._accept_one(sock):
                    return
                continue
            if i and budget.exhausted:
                return      # the rest wait in the backlog for a turn with budget left
            started = budget.clock()
            more = self._accept_one(sock)
            budget.charge(budget.clock() - started)
            if not more:
                return

    def _accept_one(self, sock: socket.socket) -> bool:
        """Accept one connection; False when none waits or accepting had to stop."""
        try:
            conn, address = sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionAbortedError:   # reset while it waited in the backlog
            self._count("econnaborted")
            return True
        except OSError as exc:
            self._failed(sock, exc)
            return False
        try:
            conn.setblocking(False)
            sent = _first_look(conn)
            if sent is None:
                self._gone_at_accept(conn, address)
                return True
            if self.lobby is not None:
                self.lobby.add(conn, f"{address[0]}:{address[1]}", sent)
                return True
            self._start_attach(conn, self.protocol_factory)
        except Exception:
            conn.close()
            raise
        return True

    def hand_over(self, conn: socket.socket, first_bytes: bytes, accepted_at: float) -> None:
        """The lobby's entry ``conn`` sent its first TLS record (``first_bytes``, read
        already): make its transport and connection now, its deadline running since
        ``accepted_at`` (loop time)."""
        protocol = self.protocol_factory()
        cast("WaitedInLobby", protocol).first_bytes_waited(first_bytes, accepted_at)
        try:
            self._start_attach(conn, lambda: protocol)
        except Exception:
            conn.close()
            raise

    def _start_attach(self, conn: socket.socket,
                      factory: Callable[[], asyncio.BaseProtocol]) -> None:
        task = self.loop.create_task(self._attach(conn, factory))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attach(self, conn: socket.socket,
                      factory: Callable[[], asyncio.BaseProtocol]) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, conn)
        except Exception as exc:  # noqa: BLE001 - the peer's problem, not the listener's
            self.attach_failures += 1
            conn.close()
            self.ratelog.log(("listener", "attach"), logging.WARNING,
                             "could not set up an accepted connection: %r", exc)

    def _gone_at_accept(self, conn: socket.socket, address: Any) -> None:
        """The peer closed (or reset) before sending a byte: no transport, no protocol,
        no deadline for it, only the count and a rate-limited line per source address."""
        conn.close()
        self.rejected["closed_before_data"] = self.rejected.get("closed_before_data", 0) + 1
        host = address[0] if isinstance(address, tuple) else str(address)
        self.ratelog.log(("listener", "gone", host), logging.WARNING,
                         "[%s] connected and closed without sending a byte; closed at "
                         "accept (router_connections_rejected_total"
                         "{reason=\"closed_before_data\"})", host)

    def _failed(self, sock: socket.socket, exc: OSError) -> None:
        """An accept error other than "nothing waits": count it; for a shortage of
        descriptors or memory (or an error we do not know), stop polling a while."""
        reason = RESOURCE_ERRNOS.get(exc.errno or 0) \
            or errno.errorcode.get(exc.errno or 0, "oserror").lower()
        self._count(reason)
        if sock in self._paused or self._closed:
            return
        self._paused.add(sock)
        self.loop.remove_reader(sock.fileno())
        self.loop.call_later(ERROR_PAUSE, self._resume, sock)
        self.ratelog.log(("listener", reason), logging.ERROR,
                         "cannot accept connections on %s (%s); new connections wait in "
                         "the backlog, pausing %.1f s (established sessions are not "
                         "affected)", _address(sock), exc, ERROR_PAUSE)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.discard(sock)
        if not self._closed:
            self.loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def close(self) -> None:
        """Stop accepting (established sessions stay, as with ``Server.close``)."""
        if self._closed:
            return
        self._closed = True
        if self.lobby is not None:
            self.lobby.close()
        for sock in self.sockets:
            if sock not in self._paused:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets = []       # as Server.close: no sockets (listen_port is None then)
        self._paused.clear()

    async def wait_closed(self) -> None:
        """Until the connections accepted before ``close`` have their transports."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _first_look(conn: socket.socket) -> bool | None:
    """Whether the peer of a just-accepted (non-blocking) socket has sent something yet;
    None when it has already closed or reset it without sending anything: a
    connect/close flood's connections, which cost an accept, a peek and a close here
    instead of a transport, a protocol, a handshake deadline and their teardown. One
    ``recv`` with ``MSG_PEEK`` (it leaves the bytes where they are)."""
    try:
        return True if conn.recv(1, socket.MSG_PEEK) else None
    except (BlockingIOError, InterruptedError):
        return False                    # connected, nothing sent yet
    except OSError:
        return None                     # reset already


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


__all__ = ["ACCEPTS_PER_TURN", "Listener"]
