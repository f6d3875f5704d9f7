"""The lobby: accepted connections that have not sent their first TLS record yet.

A connection that is accepted and then sends nothing, or a record header and then
nothing (issue 21's floods: 10 000 of them in a second), used to get everything an
honest peer gets at once: a transport, a :class:`~router.transport.connection.
PeerConnection` with its buffers and a deadline timer, the node's bookkeeping, and at
its deadline the teardown of all of it. ~30 Python objects and 200 µs of the node's
CPU each; 10 000 of them kept the young and middle GC generations busy (collections of
6-11 ms while the flood's connections arrived) and held honest agents' results behind
them. Here such a connection is a socket and a :class:`Waiting` entry: an epoll set of
the lobby's own polls its descriptor (Linux, as the node), what it sends is read into
the entry until the first TLS record is whole, and only then is it handed to the
listener to become a transport and a connection, with those bytes and the time left of
its handshake deadline. Honest
clients send their ClientHello right after connecting, so for them the lobby is a
``recv`` on the way in.

The entries are unauthenticated connections like any other: admission's caps count
them, may drop the oldest of them for a newcomer (:class:`~router.transport.admission.
Admission` calls :meth:`Waiting.abort`), and the owner counts them against
``max_connections`` and the descriptor ceiling (:meth:`LobbyOwner.lobby_gate`). Their
handshake deadline runs from the accept; deadlines that passed are acted on in accept
order, as many a loop turn as the admission budget allows (at most
``EXPIRIES_PER_TURN``), each counted and logged as a handshake timeout by the owner
(``handshake_failed``), as is a peer that closes or resets before its first record is
whole. All of the lobby's work is charged to the node's admission budget per loop turn
(``router.transport.turnbudget``).
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections import deque
from collections.abc import Callable
from typing import Protocol

from router.protocol.tlsrecord import gather_first_record
from router.transport.admission import EXPIRIES_PER_TURN, Admission
from router.transport.turnbudget import TurnBudget

__all__ = ["Lobby", "LobbyOwner", "Waiting"]

#: Ready entries taken from the lobby's poller at a time.
POLL_BATCH = 64

#: What one read may take: as much as a connection's read (the node's read buffer), so a
#: client that sends something else than TLS (a 60 000-byte HTTP request) is read whole
#: before it is refused and closed: a socket closed with input unread sends a reset, and
#: the client would not get the refusal.
RECV_SIZE = 64 * 1024


class Waiting:
    """An accepted connection in the lobby (the ``Admitted`` protocol of admission, and
    what the owner's ``handshake_failed`` reads of a connection)."""

    __slots__ = ("_lobby", "accepted_at", "address", "handshake_bytes_in", "held", "sock")

    #: Inbound: never a connection we dialled (``Sessions.handshake_failed`` reads it).
    expected_endpoint = None
    handshake_bytes_out = 0

    def __init__(self, lobby: Lobby, sock: socket.socket, address: str,
                 accepted_at: float) -> None:
        self._lobby = lobby
        self.sock = sock
        self.address = address
        self.accepted_at = accepted_at
        self.held: bytearray | None = None
        self.handshake_bytes_in = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def abort(self, reason: str) -> None:
        """Dropped (admission's caps, ``max_connections``): closed, no handshake counted."""
        self._lobby.discard(self)

    def handshake_slot_granted(self) -> None:      # pragma: no cover - never asks for one
        """Entries never ask admission for a handshake slot (their connection does)."""

    def unread_bytes(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"<Waiting {self.address}>"


class LobbyOwner(Protocol):
    """What the lobby needs from the node."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def turn_budget(self) -> TurnBudget: ...

    @property
    def admission(self) -> Admission: ...

    def lobby_gate(self, entry: Waiting, waiting: int) -> bool:
        """May ``entry`` wait (the node is not stopping, descriptors and
        ``max_connections`` allow it, ``waiting`` others in the lobby)? The owner logs
        and counts a refusal; the lobby closes the socket."""

    def handshake_failed(self, conn: Waiting, exc: BaseException) -> None:
        """``conn``'s handshake ended before it started: deadline, reset or close."""


class Lobby:
    """Accepted sockets until their first TLS record is whole (module docstring).

    ``hand_over(sock, data, accepted_at)`` makes the connection of an entry whose
    first record came: ``data`` is everything read so far. ``timeout()`` is the
    handshake deadline in seconds, read at each accept (a reload may change it)."""

    def __init__(self, owner: LobbyOwner,
                 hand_over: Callable[[socket.socket, bytes, float], None],
                 timeout: Callable[[], float]) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.hand_over = hand_over
        self.timeout = timeout
        #: Entries waiting now, oldest first (their deadlines are in ``_deadlines``).
        self._entries: dict[Waiting, None] = {}
        #: (deadline, entry) in accept order; entries that left are skipped when met.
        self._deadlines: deque[tuple[float, Waiting]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        #: One read buffer for every entry (what stays is copied out of it).
        self._buffer = bytearray(RECV_SIZE)
        #: The entries' descriptors are polled by an epoll set of the lobby's own, which
        #: the loop polls as one descriptor: registering a descriptor there is one system
        #: call, where the loop's ``add_reader``/``remove_reader`` make and drop a handle
        #: per descriptor (a fifth of the lobby's samples in py-spy during an idle flood;
        #: the node's CPU per flood then moved within the runs' spread). It also lets
        #: one turn take ready entries only as far as the admission budget goes.
        self._poller = select.epoll()
        self._polled: dict[int, Waiting] = {}
        self._paused = False                # (the budget put the poller off; _pause)
        self.loop.add_reader(self._poller.fileno(), self._on_ready)
        #: Entries handed over to become connections (their first record came).
        self.handed_over = 0
        #: Entries whose handshake deadline passed here.
        self.expired = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, sock: socket.socket, address: str, sent: bool) -> None:
        """A connection just accepted (non-blocking, its peer not gone; ``sent``: it has
        input already). The listener charges this to the turn budget with the accept."""
        owner = self.owner
        now = self.loop.time()
        entry = Waiting(self, sock, address, now)
        owner.admission.admit(entry)        # counted as accepted, as a refused one is
        if self._closed or not owner.lobby_gate(entry, len(self._entries)):
            owner.admission.release(entry)
            sock.close()
            return
        deadline = now + self.timeout()
        self._entries[entry] = None
        self._deadlines.append((deadline, entry))
        if not sent or self._read(entry, polled=False):
            fd = sock.fileno()
            self._poller.register(fd, select.EPOLLIN)
            self._polled[fd] = entry
            if self._timer is None:
                self._arm(now)

    def _on_ready(self) -> None:
        """Entries with input (or a close) waiting: read them, one at least and then as
        many as the turn's admission budget allows; past it the poller is put off to a
        later turn (``TurnBudget.defer``, counted), the rest staying ready."""
        budget = self.owner.turn_budget
        polled = self._polled
        for done, (fd, _) in enumerate(self._poller.poll(0, POLL_BATCH)):
            if done and budget.exhausted:
                self._pause()
                return
            entry = polled.get(fd)
            if entry is not None:
                started = budget.clock()
                self._read(entry, polled=True)
                budget.charge(budget.clock() - started)

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.loop.remove_reader(self._poller.fileno())
            self.owner.turn_budget.defer(self._resume)

    def _resume(self) -> None:
        self._paused = False
        if not self._closed:
            self.loop.add_reader(self._poller.fileno(), self._on_ready)

    def _read(self, entry: Waiting, polled: bool) -> bool:
        """Read what the peer sent; True while the entry keeps waiting here. ``polled``:
        the loop polls its descriptor (stopped before it leaves)."""
        buffer = self._buffer
        try:
            nbytes = entry.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            self._fail(entry, exc, polled)
            return False
        if not nbytes:
            self._fail(entry, ConnectionResetError(
                "connection closed during the TLS handshake"), polled)
            return False
        entry.handshake_bytes_in += nbytes
        entry.held, whole = gather_first_record(entry.held, memoryview(buffer)[:nbytes])
        if whole is None:
            return True
        self._leave(entry, polled)
        self.handed_over += 1
        self.hand_over(entry.sock, bytes(whole), entry.accepted_at)
        return False

    def _fail(self, entry: Waiting, exc: BaseException, polled: bool) -> None:
        self._leave(entry, polled)
        entry.sock.close()
        self.owner.handshake_failed(entry, exc)

    def _leave(self, entry: Waiting, polled: bool) -> None:
        """Out of the lobby, its poll and admission's tables (the socket stays open:
        a descriptor leaves the poller before it is closed or becomes a transport)."""
        if polled:
            fd = entry.sock.fileno()
            del self._polled[fd]
            self._poller.unregister(fd)
        if entry in self._entries:
            del self._entries[entry]
            self.owner.admission.release(entry)

    def discard(self, entry: Waiting) -> None:
        """Close ``entry`` without counting a handshake (admission dropped it)."""
        if entry in self._entries:
            self._leave(entry, polled=True)
            entry.sock.close()

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, now: float) -> None:
        """The timer for the oldest entry's deadline (entries that left are dropped from
        the head of the queue here)."""
        deadlines, entries = self._deadlines, self._entries
        while deadlines and deadlines[0][1] not in entries:
            deadlines.popleft()
        if deadlines:
            self._timer = self.loop.call_later(max(0.0, deadlines[0][0] - now),
                                               self._on_deadline)

    def _on_deadline(self) -> None:
        """Close the entries whose deadline passed, oldest first: at least one, then
        while the turn's admission budget lasts and at most ``EXPIRIES_PER_TURN``; the
        rest in the next turns. A flood's 10 000 deadlines pass within a second, and each
        close (with its count and log) costs the loop tens of microseconds."""
        self._timer = None
        now = self.loop.time()
        budget = self.owner.turn_budget
        deadlines, entries = self._deadlines, self._entries
        done = 0
        while deadlines:
            deadline, entry = deadlines[0]
            if entry not in entries:
                deadlines.popleft()             # left the lobby meanwhile
                continue
            if deadline > now:
                break
            if done and (done >= EXPIRIES_PER_TURN or budget.exhausted):
                self._timer = self.loop.call_later(0.0, self._on_deadline)
                return
            deadlines.popleft()
            started = budget.clock()
            self.expired += 1
            self._fail(entry, TimeoutError(
                f"TLS handshake not finished within {now - entry.accepted_at:.3g} s "
                f"(nothing, or not a whole first TLS record, received)"), polled=True)
            budget.charge(budget.clock() - started)
            done += 1
        self._arm(now)

    def close(self) -> None:
        """The listener closes: every waiting connection with it (not counted)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for entry in list(self._entries):
            self.discard(entry)
        if not self._paused:
            self.loop.remove_reader(self._poller.fileno())
        self._poller.close()

