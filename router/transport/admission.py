"""Admission before authentication: what a connection may cost before it proves who it is.

Anybody who reaches the cluster port can open TCP connections. Until a connection has
finished its TLS handshake (and with it shown a certificate of our CA) it is
*unauthenticated*, and without a cap of their own such connections count against
``max_connections`` like real peers: 45 idle sockets locked a real agent out of a node with
``max_connections = 40`` (users.md P3: server-side handshake admission so that a storm
cannot starve live peers). Here:

- *idle* unauthenticated connections (accepted, nothing received yet) are capped per
  source address and in total; when a cap is full the *oldest idle* connection (of that
  address, or overall) is dropped for the newcomer, so idle sockets age out instead of
  locking the door. A connection that has started its handshake is never dropped for a
  newcomer by these caps: its handshake deadline bounds it, and dropping handshakes in
  progress turns a legitimate reconnect storm from one address (agents behind NAT, a
  load balancer) into a livelock where nobody finishes (measured: 5 000 agents from one
  address stalled at 4 448 connected with a per-address cap of 50). When
  ``max_connections`` itself is full, the node drops the oldest unauthenticated one too,
  idle ones first (:meth:`Admission.oldest`), before it refuses a newcomer;
- at most ``max_concurrent_handshakes`` handshakes run at once: a slot is taken when the
  first bytes of a handshake arrive (an idle socket holds none) and given back when it
  ends; connections beyond wait, unread, with their handshake deadline running. They
  wait *per source address, served round-robin* (:class:`FairQueue`): 10 000 stalled
  handshakes from 20 addresses queued first used to hold a newcomer from elsewhere behind
  all of them until its own deadline passed (issue 21: honest agents could not connect
  during such a flood); now it waits for at most one slot per busy address;
- a handshake holding a slot that has received nothing for ``stall_after`` seconds (a
  ClientHello announced and never sent: slowloris on the handshake) loses its slot and is
  closed, but only when others wait for a slot and only when nothing of it is waiting
  unread in our socket (a busy node reading late is not the peer stalling); counted as
  evicted ``stalled_handshake``. 0 turns it off;
- new handshakes start at most ``rate`` a second, with bursts of ``burst``: a token
  bucket (``new_connections_per_second``; 0 turns it off). A connection over the budget
  is not closed (closing makes a storm redial, which costs more than it saves): like one
  waiting for a slot, it is read no further, keeps its place in the queue and its
  handshake deadline running, and starts when a token comes (``call_later`` schedules
  that; counted in :attr:`Admission.rate_limited`);
- :func:`peer_text` makes what an unauthenticated peer sent safe for a log line: at most
  ``PEER_TEXT_LIMIT`` bytes, escaped, with the length of what was cut.

Everything is counted (:attr:`Admission.evicted`, :attr:`Admission.handshake_waits`,
:attr:`Admission.rate_limited`).
No asyncio here: the connection calls in, and the members it needs from a connection are
the :class:`Admitted` protocol.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["Admission", "Admitted", "FairQueue", "PEER_TEXT_LIMIT", "peer_text",
           "source_address"]

log = logging.getLogger("router.transport")

#: Seconds between two log lines about evictions for the same address and cap.
LOG_INTERVAL = 10.0

#: Stalled slot holders one stall check closes in one loop turn; more wait for the next
#: turn. Each one closed starts a waiting handshake: under a flood of stalled
#: ClientHellos a check that freed all 200 slots at once held the loop 15-20 ms.
PREEMPTIONS_PER_TURN = 16

#: Handshake deadlines acted on in one loop turn (``Admission.expire_soon``).
EXPIRIES_PER_TURN = 32

#: Most bytes of peer data in one log line about an unauthenticated peer.
PEER_TEXT_LIMIT = 200


def peer_text(data: bytes | str, limit: int = PEER_TEXT_LIMIT) -> str:
    """``data`` cut to ``limit`` bytes and escaped (``repr`` style, one line), saying how
    many bytes were left out: a 60 000-byte HTTP request stays a short log line."""
    raw = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else bytes(data)
    text = repr(raw[:limit])
    if len(raw) > limit:
        text += f" (+{len(raw) - limit} bytes)"
    return text


def source_address(address: str) -> str:
    """The source a ``host:port`` peer address counts against: its host, and for IPv6 its
    /64 (one host owns a whole /64 and may use a new address for every connection: keyed
    by the full address, the per-address cap and the round-robin of waiting handshakes
    treated each as another source; review)."""
    host = address.rsplit(":", 1)[0]
    if ":" not in host:
        return host
    try:
        prefix = int(ipaddress.IPv6Address(host.split("%", 1)[0])) >> 64 << 64
    except ValueError:
        return host
    return f"{ipaddress.IPv6Address(prefix)}/64"


class Admitted(Protocol):
    """What admission needs from a connection."""

    @property
    def address(self) -> str: ...

    def abort(self, reason: str) -> None: ...

    def handshake_slot_granted(self) -> None:
        """Called when a handshake that waited for a slot may start."""

    def unread_bytes(self) -> int:
        """Input waiting in our socket, not read yet (0 when unknown)."""


class FairQueue:
    """Connections waiting for a handshake slot: a FIFO per source address, the addresses
    served round-robin. Removal is lazy (O(1)): a connection that left is skipped when
    its turn comes."""

    __slots__ = ("_members", "_queues", "_rotation")

    def __init__(self) -> None:
        self._members: dict[Admitted, str] = {}
        self._queues: dict[str, deque[Admitted]] = {}
        self._rotation: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._members)

    def __bool__(self) -> bool:
        return bool(self._members)

    def __contains__(self, conn: object) -> bool:
        return conn in self._members

    def append(self, conn: Admitted) -> None:
        address = source_address(conn.address)
        self._members[conn] = address
        queue = self._queues.get(address)
        if queue is None:
            queue = self._queues[address] = deque()
            self._rotation.append(address)
        queue.append(conn)

    def remove(self, conn: Admitted) -> None:
        """Raises ValueError when ``conn`` does not wait (like ``deque.remove``)."""
        if self._members.pop(conn, None) is None:
            raise ValueError("not waiting")

    def popleft(self) -> Admitted:
        """The next connection: the oldest of the address whose turn it is."""
        rotation, queues, members = self._rotation, self._queues, self._members
        while rotation:
            address = rotation[0]
            queue = queues[address]
            while queue:
                conn = queue.popleft()
                if members.get(conn) == address:
                    del members[conn]
                    if queue:
                        rotation.rotate(-1)         # the next address's turn
                    else:
                        rotation.popleft()
                        del queues[address]
                    return conn
            rotation.popleft()                      # only departed ones were left
            del queues[address]
        raise IndexError("nobody waits")


class Admission:
    """Caps on unauthenticated connections and on concurrent handshakes, for one listener."""

    def __init__(self, max_unauthenticated: int, max_per_address: int,
                 max_handshakes: int, idle_grace: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, rate: float = 0.0,
                 burst: int = 1,
                 call_later: Callable[[float, Callable[[], None]], Any] | None = None,
                 stall_after: float = 0.0) -> None:
        self.max_unauthenticated = max_unauthenticated
        self.max_per_address = max_per_address
        self.max_handshakes = max_handshakes
        #: An idle connection younger than this is never dropped by the idle caps: in a
        #: storm, accepted connections wait a moment before the loop first reads them
        #: (their ClientHello already sits in the kernel), so "nothing received yet"
        #: only means "idle" once it has lasted a while.
        self.idle_grace = idle_grace
        self._clock = clock
        #: When each idle connection was admitted (``clock``).
        self._since: dict[Admitted, float] = {}
        #: Unauthenticated connections, oldest first (dicts keep insertion order).
        self._pending: dict[Admitted, str] = {}
        #: The pending ones that have not sent a byte yet, oldest first, overall and by
        #: address: what the caps count and what they may drop.
        self._idle: dict[Admitted, str] = {}
        self._by_address: dict[str, dict[Admitted, None]] = {}
        self._handshaking: set[Admitted] = set()
        #: Slot holders by the time their last handshake bytes came, oldest first.
        self._progress: dict[Admitted, float] = {}
        #: Seconds without handshake bytes after which a slot holder may lose its slot
        #: to a waiting connection (0: never).
        self.stall_after = stall_after
        self._stall_check_armed = False
        self._waiting = FairQueue()
        #: Dropped for a newcomer, by why ("per_address", "total", "max_connections").
        self.evicted: dict[str, int] = {}
        #: Handshakes that had to wait for a slot.
        self.handshake_waits = 0
        #: Inbound connections admitted so far (``router_connections_accepted_total``).
        self.admitted = 0
        #: The token bucket for new handshakes: tokens a second (0: off), bucket size.
        self.rate = 0.0
        self.burst = 1
        self._tokens = 1.0
        self._refilled = clock()
        #: ``call_later(delay, callback)``: how a token that comes later wakes the queue
        #: (the node passes the event loop's; without it only a handshake that ends does).
        self.call_later = call_later
        self._timer_armed = False
        self.set_rate(rate, burst)
        #: Handshakes that had to wait for a token of the bucket.
        self.rate_limited = 0
        #: (address, why) -> (monotonic time of the last line, evictions since)
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        #: Handshake deadlines that passed, acted on a few per loop turn (expire_soon).
        self._expiring: deque[Callable[[], None]] = deque()
        self._expiry_armed = False

    @property
    def pending(self) -> int:
        """Unauthenticated connections now."""
        return len(self._pending)

    @property
    def handshaking(self) -> int:
        return len(self._handshaking)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def addresses(self) -> int:
        return len(self._by_address)

    # -- unauthenticated connections ----------------------------------------------------

    def admit(self, conn: Admitted, counted: bool = True) -> list[Admitted]:
        """A new inbound connection; returns the older ones dropped to make room.
        ``counted=False``: the same connection again, out of the lobby
        (``router.transport.lobby``), not counted as accepted twice."""
        address = source_address(conn.address)
        dropped: list[Admitted] = []
        now = self._clock()
        self.admitted += counted
        same = self._by_address.get(address)
        if same is not None and len(same) >= self.max_per_address:
            victim = self._idle_long_enough(same, now)
            if victim is not None:
                dropped.append(self._evict(victim, "per_address",
                                           f"more than {self.max_per_address} idle "
                                           f"unauthenticated connections from {address}"))
        if len(self._idle) >= self.max_unauthenticated:
            victim = self._idle_long_enough(self._idle, now)
            if victim is not None:
                dropped.append(self._evict(victim, "total",
                                           f"more than {self.max_unauthenticated} idle "
                                           f"unauthenticated connections"))
        self._pending[conn] = address
        self._idle[conn] = address
        self._since[conn] = now
        self._by_address.setdefault(address, {})[conn] = None
        return dropped

    def _idle_long_enough(self, oldest_first: Mapping[Admitted, object], now: float
                          ) -> Admitted | None:
        """The oldest of ``oldest_first`` if it has been idle for ``idle_grace``, else
        None (then none of them has: the newcomer is let in over the cap)."""
        for conn in oldest_first:
            return conn if now - self._since.get(conn, now) >= self.idle_grace else None
        return None

    def _started(self, conn: Admitted) -> None:
        """``conn`` sent its first bytes: no longer idle, no longer under the idle caps."""
        self._since.pop(conn, None)
        address = self._idle.pop(conn, None)
        if address is not None:
            same = self._by_address.get(address)
            if same is not None:
                same.pop(conn, None)
                if not same:
                    del self._by_address[address]

    def oldest(self, exclude: Admitted) -> Admitted | None:
        """Drop the oldest unauthenticated connection but ``exclude`` (``max_connections``
        is full and a newcomer knocks); returns it, or None when there is none."""
        for candidates in (self._idle, self._pending):
            for conn in candidates:
                if conn is not exclude:
                    return self._evict(conn, "max_connections",
                                       "max_connections reached; dropped for a newcomer")
        return None

    def _evict(self, conn: Admitted, why: str, reason: str) -> Admitted:
        self.evicted[why] = self.evicted.get(why, 0) + 1
        self.release(conn)
        conn.abort(f"oldest unauthenticated connection: {reason}")
        self._log(source_address(conn.address), why, f"dropped unauthenticated connection "
                  f"{conn.address} (the oldest): {reason}")
        return conn

    def _log(self, address: str, why: str, text: str) -> None:
        """One line per address, cap and ``LOG_INTERVAL``; counts the ones held back."""
        now = time.monotonic()
        key = (address, why)
        last = self._logged.get(key)
        if last is not None and now - last[0] < LOG_INTERVAL:
            self._logged[key] = (last[0], last[1] + 1)
            return
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[key] = (now, 0)
        held = f" ({last[1]} similar since)" if last is not None and last[1] else ""
        log.warning("%s%s", text, held)

    def release(self, conn: Admitted) -> None:
        """The connection finished its handshake, or closed: no longer counted."""
        self._pending.pop(conn, None)
        self._started(conn)
        self.handshake_ended(conn)

    # -- handshake slots ------------------------------------------------------------------

    def set_rate(self, rate: float, burst: int) -> None:
        """New handshakes a second (0: no bucket) and the bucket's size (a reload)."""
        self._refill()
        was_on = bool(self.rate)
        self.rate = max(0.0, float(rate))
        self.burst = max(1, int(burst))
        # turned on (or new): a full bucket; changed: no more than the new size
        self._tokens = (min(self._tokens, float(self.burst)) if was_on
                        else float(self.burst))
        self._grant()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate:
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def _take_token(self) -> bool:
        if not self.rate:
            return True
        self._refill()
        if self._tokens >= 1.0 - 1e-9:     # (float steps: 0.1 s x 10/s is 0.9999...)
            self._tokens -= 1.0
            return True
        return False

    @property
    def tokens(self) -> float:
        """Tokens in the bucket now (``burst`` when it is off)."""
        self._refill()
        return self._tokens

    def begin_handshake(self, conn: Admitted) -> bool:
        """The first handshake bytes arrived: True when ``conn`` may start now; else it
        waits (for a slot, or for a token of the bucket) and gets
        ``handshake_slot_granted`` later."""
        if conn in self._handshaking:
            return True
        self._started(conn)
        if conn in self._waiting:
            return False
        if len(self._handshaking) >= self.max_handshakes:
            self.handshake_waits += 1
            # a stalled slot holder closed: its slot goes to whoever waited (round-robin),
            # or to us when nobody did
            if (self.stall_after and self._preempt_stalled()
                    and len(self._handshaking) < self.max_handshakes and not self._waiting
                    and self._take_token()):
                self._handshaking.add(conn)
                self._progress[conn] = self._clock()
                return True
        elif not self._waiting and self._take_token():
            self._handshaking.add(conn)
            self._progress[conn] = self._clock()
            return True
        else:                           # a slot is free: the bucket (or those queued for
            self.rate_limited += 1      # it ahead of us) holds us back
            self._arm_timer()
        if self.rate and not self._timer_armed and len(self._handshaking) < self.max_handshakes:
            # A stalled holder was closed for us but the bucket was empty: without the
            # timer the free slot waited for some other handshake to end (review).
            self.rate_limited += 1
            self._arm_timer()
        self._waiting.append(conn)
        self._arm_stall_check()
        return False

    def _arm_stall_check(self) -> None:
        """While connections wait for a slot, look for stalled slot holders every half
        ``stall_after`` (newcomers also look, in ``begin_handshake``)."""
        if self._stall_check_armed or not self.stall_after or self.call_later is None:
            return
        self._stall_check_armed = True
        self.call_later(self.stall_after / 2, self._on_stall_check)

    def expire_soon(self, expire: Callable[[], None]) -> None:
        """Run ``expire`` (a handshake deadline that passed) in a later loop turn, at
        most ``EXPIRIES_PER_TURN`` a turn. Connections of a flood arrive within a second
        and their deadlines pass together: closing 10 000 of them as their timers fired
        (each handing its handshake slot on) kept honest agents' results waiting 5-10
        ms. Without ``call_later`` (tests) it runs at once."""
        if self.call_later is None:
            expire()
            return
        self._expiring.append(expire)
        if not self._expiry_armed:
            self._expiry_armed = True
            self.call_later(0.0, self._on_expiries)

    def _on_expiries(self) -> None:
        expiring = self._expiring
        for _ in range(min(EXPIRIES_PER_TURN, len(expiring))):
            expiring.popleft()()
        if expiring and self.call_later is not None:
            self.call_later(0.0, self._on_expiries)
        else:
            self._expiry_armed = False

    def _on_stall_check(self) -> None:
        self._stall_check_armed = False
        for _ in range(PREEMPTIONS_PER_TURN):
            if not (self._waiting and len(self._handshaking) >= self.max_handshakes
                    and self._preempt_stalled()):
                break
        else:
            if self._waiting and self.call_later is not None:
                self._stall_check_armed = True      # more may be due: the next turn
                self.call_later(0.0, self._on_stall_check)
                return
        if self._waiting:
            self._arm_stall_check()

    def _arm_timer(self) -> None:
        """Wake the queue when the next token is due."""
        if self._timer_armed or self.call_later is None or not self.rate:
            return
        self._timer_armed = True
        self.call_later(max(0.001, (1.0 - self._tokens) / self.rate), self._on_timer)

    def _on_timer(self) -> None:
        self._timer_armed = False
        self._grant()

    def _grant(self) -> None:
        """Start waiting handshakes, oldest first, while slots and tokens last."""
        while self._waiting and len(self._handshaking) < self.max_handshakes:
            if not self._take_token():
                self._arm_timer()
                return
            nxt = self._waiting.popleft()
            if nxt in self._pending:
                self._handshaking.add(nxt)
                self._progress[nxt] = self._clock()
                nxt.handshake_slot_granted()
            elif self.rate:
                self._tokens += 1.0             # gone meanwhile: its token goes back

    def progress(self, conn: Admitted) -> None:
        """Handshake bytes came from ``conn`` (it holds a slot): not stalled."""
        if conn in self._progress:
            del self._progress[conn]
            self._progress[conn] = self._clock()

    def _preempt_stalled(self) -> bool:
        """All slots are taken and somebody waits: close the slot holder that has sent
        nothing for longest, if that is ``stall_after`` or more and nothing of it waits
        unread (then the slot is free); True when one was closed."""
        now = self._clock()
        for conn, since in self._progress.items():
            if now - since < self.stall_after:
                return False                # the oldest is recent: so are the rest
            if conn.unread_bytes() > 0:
                continue                    # we are late reading it, it is not stalling
            self._evict(conn, "stalled_handshake",
                        f"its handshake sent nothing for {now - since:.1f} s "
                        f"(timeouts.handshake_stall) while others wait for a slot")
            return True
        return False

    def handshake_ended(self, conn: Admitted) -> None:
        """``conn``'s handshake is over (done, failed, closed): its slot goes to the
        longest waiting connection."""
        if conn in self._handshaking:
            self._handshaking.discard(conn)
            self._progress.pop(conn, None)
        else:
            try:
                self._waiting.remove(conn)
            except ValueError:
                pass
            return
        self._grant()
