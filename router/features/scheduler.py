"""Local check scheduling: when each check runs, who runs it in an HA zone, soft/hard state.

Pure logic, no I/O: the node asks :meth:`Scheduler.due` with ``now`` for the checks to start,
starts them (executor pool, or ``event::ExecuteCommand`` to a command_endpoint), and hands
the state back with :meth:`Scheduler.record`, which computes the ``vars_before`` /
``vars_after`` Icinga puts into a check result and the next time the check is due.

Spreading. Icinga starts each checkable at a random offset inside its interval so that a
restart does not run everything at once. The offset here is derived from the object's name
(SDBM hash), so it is random-looking but stable across restarts and the same on every
member of an HA zone.

HA authority (Icinga's ``UpdateObjectAuthority``, icinga-protocol.md §8). In a zone with
several endpoints each check runs on exactly one connected member: the candidates are the
zone's connected endpoints plus ourselves, sorted by name, and the owner is
``candidates[SDBM(name) % len(candidates)]``. SDBM runs over the name's bytes as *signed*
chars with 64-bit wrap-around (what Icinga computes on x86-64), so a zone mixing our nodes
and Icinga nodes agrees on who runs what. During the first 30 s after start, while a
multi-endpoint zone has no other member connected, nobody is authoritative (Icinga's cold
start rule: the peer may still be coming and already running the checks).

Soft and hard states (Icinga 2.13's ``Checkable::ProcessCheckResult``): an OK result
makes the state HARD OK at attempt 1 at once; a problem after OK starts at attempt 1 in
a SOFT state and is retried every ``retry_interval``, counting attempts, until the count
reaches ``max_check_attempts``, where it becomes HARD and the count goes back to 1; a
problem after a hard problem (WARNING to CRITICAL) stays HARD at attempt 1. For a host
check, exit status 1 (WARNING) is UP, as Icinga's ``Host::CalculateState`` has it. The
result carries ``previous_hard_state``: the hard state before the last hard change (99,
pending, until there was one).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# CheckSpec is part of the configuration (``[[checks]]``); re-exported for this module's users.
from router.config import CheckSpec as CheckSpec

STATE_OK = 0
SOFT, HARD = 0, 1
#: Icinga's ``previous_hard_state`` before any hard state change (pending).
STATE_PENDING = 99
#: Icinga's cold start window for HA authority (seconds after start).
COLD_START = 30.0
_MASK = (1 << 64) - 1


def _host_state(state: int) -> int:
    """Icinga's ``Host::CalculateState``: OK and WARNING are UP (0), the rest DOWN (1)."""
    return 0 if state in (0, 1) else 1


def _is_ok(state: int, host: bool) -> bool:
    return state == STATE_OK or host and state == 1


def sdbm(name: str) -> int:
    """Icinga's ``Utility::SDBM`` on x86-64: bytes as signed chars, 64-bit unsigned wrap."""
    h = 0
    for byte in name.encode("utf-8"):
        c = byte - 256 if byte >= 0x80 else byte
        h = (c + (h << 6) + (h << 16) - h) & _MASK
    return h


@dataclass(slots=True)
class CheckState:
    state: int = STATE_OK
    state_type: int = HARD
    attempt: int = 1
    next_check: float = 0.0
    running: bool = False
    #: Whether this node ran the check last time (for hand-over logging).
    owned: bool | None = None
    #: The hard state before the last hard state change, and the one after it.
    previous_hard: int = STATE_PENDING
    last_hard: int = STATE_PENDING

    def as_vars(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "reachable": True, "state": self.state,
                "state_type": self.state_type}


class Scheduler:
    """Due times, HA ownership and soft/hard state of the node's local checks."""

    def __init__(self, checks: Iterable[CheckSpec], *, local_endpoint: str,
                 zone_endpoints: Iterable[str], started: float,
                 cold_start: float = COLD_START) -> None:
        self.checks: dict[str, CheckSpec] = {}
        self.states: dict[str, CheckState] = {}
        self._heap: list[tuple[float, str]] = []
        self.local_endpoint = local_endpoint
        self.zone_endpoints = tuple(zone_endpoints)
        self.started = started
        self.cold_start = cold_start
        #: Hand-overs of authority (a check moving to or from this node).
        self.handovers = 0
        self.scheduled = 0
        for spec in checks:
            name = spec.name
            self.checks[name] = spec
            # Stable offset within the first interval: the herd is spread at start.
            offset = (sdbm(name) % 10_000) / 10_000 * spec.interval
            state = self.states[name] = CheckState(next_check=started + offset)
            heapq.heappush(self._heap, (state.next_check, name))

    def __len__(self) -> int:
        return len(self.checks)

    def owner(self, name: str, connected: Iterable[str], now: float) -> str | None:
        """The endpoint that runs ``name`` now; None during the cold start window."""
        peers = [e for e in self.zone_endpoints if e != self.local_endpoint and e in connected]
        if len(self.zone_endpoints) > 1 and not peers and now - self.started < self.cold_start:
            return None
        candidates = sorted([*peers, self.local_endpoint])
        return candidates[sdbm(name) % len(candidates)]

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float, connected: Iterable[str]
            ) -> tuple[list[tuple[CheckSpec, float]], list[tuple[str, bool]]]:
        """Checks to start now with their planned time, and hand-overs (name, now owned).

        A due check owned by another HA member is rescheduled one interval later without
        running here; its state stays untouched (the owner's results update it).
        """
        connected = set(connected)
        start: list[tuple[CheckSpec, float]] = []
        changes: list[tuple[str, bool]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            planned, name = heapq.heappop(heap)
            state = self.states[name]
            if state.next_check != planned or state.running:
                continue  # stale heap entry, or still running
            spec = self.checks[name]
            owned = self.owner(name, connected, now) == self.local_endpoint
            if state.owned is not None and owned != state.owned:
                self.handovers += 1
                changes.append((name, owned))
            state.owned = owned
            if not owned:
                # During the cold start nobody owns it: look again when the window ends,
                # not a whole interval later (an hour's check waited an hour: review).
                later = now + spec.interval
                if len(self.zone_endpoints) > 1 and now - self.started < self.cold_start:
                    later = min(later, self.started + self.cold_start)
                self._schedule(name, later)
                continue
            state.running = True
            self.scheduled += 1
            start.append((spec, planned))
        return start, changes

    def record(self, name: str, state: int, now: float
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply a result; return (vars_before, vars_after) and schedule the next run.
        ``previous_hard_state`` of the result: the ``previous_hard`` of the state after."""
        spec = self.checks[name]
        current = self.states[name]
        before = current.as_vars()
        host = spec.service is None
        old_state, old_type = current.state, current.state_type
        if _is_ok(state, host):
            state_type, attempt = HARD, 1
        else:
            state_type, attempt = old_type, 1
            if _is_ok(old_state, host):
                state_type = SOFT                   # a new problem: the first soft attempt
            elif old_type == SOFT:
                attempt = current.attempt + 1       # one more soft attempt
            if attempt >= spec.max_check_attempts:
                state_type, attempt = HARD, 1       # hard now: the counter starts again
        changed = (_host_state(old_state) != _host_state(state) if host
                   else old_state != state)
        if state_type == HARD and (old_type == SOFT or changed):
            current.previous_hard, current.last_hard = current.last_hard, state
        current.state, current.state_type, current.attempt = state, state_type, attempt
        current.running = False
        soft_problem = state_type == SOFT
        self._schedule(name, now + (spec.retry_interval if soft_problem else spec.interval))
        return before, current.as_vars()

    def observe(self, name: str, after: Any) -> None:
        """``vars_after`` of a result of this check another zone member ran: where this
        node's state goes on from when the check moves here (a takeover started from
        its own stale state: the peer's HARD CRITICAL came back as a new SOFT problem at
        attempt 1; review). Ignored while the check runs here."""
        current = self.states.get(name)
        if current is None or current.running or not isinstance(after, dict):
            return
        values: list[int] = []
        for key in ("state", "state_type", "attempt"):
            value = after.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not float(value).is_integer():
                return
            values.append(int(value))
        state, state_type, attempt = values
        if state_type in (SOFT, HARD) and attempt >= 1:
            current.state, current.state_type, current.attempt = state, state_type, attempt

    def skip(self, name: str, now: float) -> None:
        """This run produced no result on purpose: the next one at the interval."""
        state = self.states[name]
        state.running = False
        self._schedule(name, now + self.checks[name].interval)

    def abandon(self, name: str, now: float) -> None:
        """The check could not be started (e.g. shutting down): try again later."""
        state = self.states[name]
        state.running = False
        self._schedule(name, now + self.checks[name].retry_interval)

    def _schedule(self, name: str, when: float) -> None:
        self.states[name].next_check = when
        heapq.heappush(self._heap, (when, name))
