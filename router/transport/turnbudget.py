"""A bound on the loop time one event-loop turn spends on connections that are not sessions.

Accepting a connection, setting it up and stepping its TLS handshake cost the event-loop
thread 50-400 µs each (a server handshake step with a P-256 key ~0.2 ms, with RSA 4096
~5 ms). Under a flood of hostile connections (issue 21: thousands of idle sockets,
anonymous clients opening and closing as fast as they can) one turn used to do this for
every connection that was ready, 16 accepts and a dozen handshake steps, and an
established agent's result that arrived meanwhile waited for the whole turn: its p99
latency rose from ~1 ms to 4-7 ms.

Here the listener and the handshaking connections *charge* what their work took; once a
turn has spent :attr:`TurnBudget.budget`, further handshake input waits (unread, its
deadline running) and the listener leaves further connections in the kernel's backlog.
The next turn resumes the waiting ones, in order, until its own budget is spent. When
nothing else runs, turns come back to back, so a reconnect storm of honest agents loses
only the cost of the extra turns; when established sessions have traffic, their reads
and writes get a turn between every bounded slice of admission work. Measured with the
default of 150 µs (perf/RESULTS.md, "A time budget for admission work"): the honest
agents' p99 during TLS churn 2.3-2.7 ms against 2.9-6.3 ms without; 500 µs did not help.

Sans-I/O apart from ``loop.call_soon`` and the clock passed in.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Final

#: Default loop time a turn may spend on connections that are not sessions yet.
DEFAULT_BUDGET: Final = 0.00015


class TurnBudget:
    """Loop time spent this turn on unauthenticated connections, and who waits for the next.

    ``budget`` 0 (or less) turns the bound off: nothing is ever ``exhausted``.
    """

    __slots__ = ("_clock", "_loop", "_scheduled", "_waiting", "budget", "deferred",
                 "deferred_turns", "spent")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: float = DEFAULT_BUDGET,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._loop = loop
        self._clock = clock
        self.budget = budget
        #: Seconds charged since the turn began (reset at the start of the next turn).
        self.spent = 0.0
        self._waiting: deque[Callable[[], None]] = deque()
        self._scheduled = False
        #: Pieces of work put off to a later turn, in total.
        self.deferred = 0
        #: Turns that ended with work still waiting.
        self.deferred_turns = 0

    @property
    def clock(self) -> Callable[[], float]:
        """The clock ``charge`` expects its seconds from (``time.perf_counter``)."""
        return self._clock

    @property
    def exhausted(self) -> bool:
        """This turn has spent its budget: put further admission work off."""
        return 0 < self.budget <= self.spent

    @property
    def waiting(self) -> int:
        """Pieces of work waiting for a later turn."""
        return len(self._waiting)

    def charge(self, seconds: float) -> None:
        """This turn spent ``seconds`` on admission work."""
        self.spent += seconds
        self._schedule()

    def defer(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` in a later turn that has budget left (in the order deferred)."""
        self._waiting.append(resume)
        self.deferred += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._new_turn)

    def _new_turn(self) -> None:
        """The start of a turn: forget what the last one spent, resume who waits."""
        self._scheduled = False
        self.spent = 0.0
        waiting = self._waiting
        while waiting and not self.exhausted:
            started = self._clock()
            waiting.popleft()()
            self.spent += self._clock() - started
        if waiting:
            self.deferred_turns += 1
        if waiting or self.spent:
            self._schedule()


__all__ = ["DEFAULT_BUDGET", "TurnBudget"]
