"""Fair reading under overload: a bound on what one event-loop turn reads from all peers.

An event loop turn polls the sockets and calls every ready protocol before it runs the
callbacks that write (our per-turn flushes, timers, the status server). When thousands
of peers all send flat out, one turn used to read a buffer from each of them: 5 000
agents x up to 256 KiB is gigabytes of input before anything is written, so the node
stopped delivering, its memory grew, heartbeats and status requests waited seconds.

The rule here: after a read while others wait for a turn or this turn has read its
budget (``busy``), a connection *parks* (its transport stops reading) and queues up. At
the end of the turn the scheduler readmits parked connections in arrival
order until the bytes they are expected to read next (each one's last read, at least
:data:`MIN_EXPECTED_READ`) reach :attr:`ReadScheduler.budget`; the rest wait for the next
turn, in order. Under normal load nobody parks (turns stay under budget, nobody waits)
and nothing changes; under overload reading becomes round-robin with a bounded turn, so
output, timers and the status endpoint keep their share of the loop.

Back-pressure (a congested send queue pausing the connections that feed it) also goes
through here: a connection released from back-pressure queues up like any other instead
of joining a thundering herd of 5 000 resumed readers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable, Final, Protocol

#: Bytes the readers admitted for one loop turn are expected to read, together.
TURN_INPUT_BUDGET: Final = 1024 * 1024
#: What a connection is assumed to read next when its last read was smaller.
MIN_EXPECTED_READ: Final = 2048
#: Largest read of an open session once this turn's reads reached the budget.
OVER_BUDGET_READ: Final = 2048
#: Weight of each read in the running size of a typical read (``note_read``).
TYPICAL_READ_WEIGHT: Final = 1 / 16


class Parked(Protocol):
    """A reader that waits for its turn (``PeerConnection``)."""

    def unpark(self) -> int:
        """Start reading again; return the bytes its next read is expected to bring
        (0 when it will not read: closed, or paused by back-pressure)."""


class ReadScheduler:
    """The queue of parked readers of one event loop and the per-turn admission."""

    __slots__ = ("_hold", "_loop", "_scheduled", "_waiting", "admitted", "budget",
                 "deferred_turns", "turn_bytes", "typical_read")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 budget: int = TURN_INPUT_BUDGET,
                 hold: Callable[[Any], None] | None = None) -> None:
        self._loop = loop
        self.budget = budget
        #: Called with each reader before its turn: back-pressure may pause it there
        #: (the node pauses a reader whose last messages went to a queue that is
        #: congested now), so that it does not read input that can only be coalesced.
        self._hold = hold
        self._waiting: deque[Parked] = deque()
        self._scheduled = False
        #: Turns that ended with readers still waiting (the node was reading at its limit).
        self.deferred_turns = 0
        #: Readers readmitted so far.
        self.admitted = 0
        #: A running average of the reads' sizes, all connections together: the least
        #: a reader is expected to bring. A reader's own last read says nothing when
        #: thousands of idle agents start sending flat out at once: each expected its
        #: last heartbeat's size, so one turn admitted 512 of them and read 32 MiB, and
        #: twenty such turns in a row (10 000 agents) kept a satellite from writing to
        #: its parent for 17 s (issue 22, the chain's max).
        self.typical_read = float(MIN_EXPECTED_READ)
        #: Bytes read since the last admission: under load, this loop turn's poll (under
        #: light load nobody parks and it grows until a read parks and an admission
        #: resets it). Past the budget every further read is cut to ``OVER_BUDGET_READ``
        #: (``PeerConnection.get_buffer``): the budget only bounds readers coming back
        #: from their turn, and when 10 000 idle agents all start sending at once, one
        #: poll read 64 KiB from each, ~400 000 results before anything was written
        #: (issue 22, the chain's max).
        self.turn_bytes = 0

    def park(self, reader: Parked) -> None:
        """Queue ``reader``; it is readmitted at the end of this turn or a later one."""
        self._waiting.append(reader)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._admit)

    def note_read(self, nbytes: int) -> None:
        """A connection read ``nbytes``: update the typical read."""
        self.typical_read += (nbytes - self.typical_read) * TYPICAL_READ_WEIGHT
        self.turn_bytes += nbytes

    @property
    def busy(self) -> bool:
        """Readers wait for a turn, or this turn has read its budget: a connection that
        just read parks (takes its turn like the others). Otherwise it reads on:
        parking after every read cost a pause and a resume of the transport (two
        ``epoll_ctl`` calls and a callback) per read, most of the time for nothing (10 000
        agents paced at one result a second each, issue 22)."""
        return bool(self._waiting) or self.over_budget

    @property
    def over_budget(self) -> bool:
        """This turn has read its budget: further reads get ``OVER_BUDGET_READ`` bytes."""
        return self.turn_bytes >= self.budget

    @property
    def waiting(self) -> int:
        """Readers queued for a later turn."""
        return len(self._waiting)

    def _admit(self) -> None:
        self._scheduled = False
        self.turn_bytes = 0
        waiting = self._waiting
        budget = self.budget
        expected = 0.0
        admitted = 0
        typical = self.typical_read
        hold = self._hold
        while waiting and expected < budget:
            reader = waiting.popleft()
            if hold is not None:
                hold(reader)
            bytes_next = reader.unpark()
            if bytes_next:
                expected += bytes_next if bytes_next > typical else typical
            admitted += 1
        self.admitted += admitted
        if waiting:
            # Runs after the next poll: the readers admitted now read first.
            self.deferred_turns += 1
            self._scheduled = True
            self._loop.call_soon(self._admit)
