"""The node's own checks and the result view against Icinga 2.13's semantics: faults a
review found (2026-12-07), each failing on the code before its fix (soft/hard states and
attempts, a host's WARNING, previous_hard_state, the cold start, the 5 minutes after
start for command_endpoint checks, the result view's caps and a result from the
future)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from router.features.checks import LocalChecks
from router.features.results import ResultStore
from router.features.scheduler import HARD, SOFT, CheckSpec, Scheduler, sdbm


# Soft/hard transitions of the node's own checks against Icinga 2.13's
# Checkable::ProcessCheckResult (lib/icinga/checkable-check.cpp, v2.13.x), and the cold
# start window. Pure scheduler, fake clock.


def _one(spec: CheckSpec, **kw) -> Scheduler:
    return Scheduler([spec], local_endpoint="n1", zone_endpoints=["n1"], started=0.0, **kw)


def _run(s: Scheduler, name: str, state: int):
    now = s.next_deadline()
    assert [spec.name for spec, _ in s.due(now, [])[0]] == [name]
    return s.record(name, state, now)


def test_hard_problem_changing_to_another_problem_stays_hard():
    # Icinga: old state HARD and not OK -> neither "OK -> NOT-OK" nor "SOFT state change"
    # applies; the state type stays HARD (a hard state change WARNING -> CRITICAL, which
    # is what notifies). The router restarts a SOFT series at attempt 1 instead, retries,
    # and reports the CRITICAL as hard only (max_check_attempts - 1) retries later.
    s = _one(CheckSpec("h", "dummy", service="x", interval=60, retry_interval=5,
                       max_check_attempts=3))
    for state in (1, 1, 1):          # WARNING until hard
        _, after = _run(s, "h!x", state)
    assert after["state_type"] == HARD
    _, after = _run(s, "h!x", 2)     # now CRITICAL
    assert after["state"] == 2
    assert after["state_type"] == HARD, after


def test_attempt_is_reset_to_one_when_the_state_becomes_hard():
    # Icinga 2.13: "HARD state change (e.g. previously 2/3 and this next attempt). Reset
    # attempt counter." -> attempt = 1 once hard (vars_after.attempt, current_attempt).
    s = _one(CheckSpec("h", "dummy", service="x", interval=60, retry_interval=5,
                       max_check_attempts=3))
    seen = [_run(s, "h!x", 2)[1] for _ in range(4)]
    assert [(a["state_type"], a["attempt"]) for a in seen] == [
        (SOFT, 1), (SOFT, 2), (HARD, 1), (HARD, 1)], seen


def test_host_check_warning_is_up_not_a_problem():
    # Icinga: Host::IsStateOK(state) is CalculateState(state) == HostUp, and WARNING (1)
    # maps to UP. A host check exiting 1 is HARD at once and checked at check_interval;
    # the router treats it as a soft problem and retries it at retry_interval.
    s = _one(CheckSpec("h", "dummy", interval=60, retry_interval=5, max_check_attempts=3))
    now = s.next_deadline()
    s.due(now, [])
    _, after = s.record("h", 1, now)
    assert after["state_type"] == HARD, after
    assert s.next_deadline() == now + 60


def test_check_due_during_cold_start_is_not_put_off_a_whole_interval():
    # A check whose spread offset falls inside the 30 s cold start of an HA zone whose
    # peer is away: Icinga leaves the authority unset for 30 s and then runs the (overdue)
    # check. The router pushes it one whole interval (here an hour) past the window.
    name = next(f"h{i}" for i in range(100_000) if sdbm(f"h{i}") % 10_000 < 50)
    s = Scheduler([CheckSpec(name, "dummy", interval=3600)], local_endpoint="a",
                  zone_endpoints=["a", "b"], started=0.0, cold_start=30.0)
    first = s.next_deadline()
    assert first is not None and first < 30.0
    assert s.due(first, [])[0] == []               # cold start: nobody runs it
    start, _ = s.due(31.0, [])                     # window over, still alone: ours
    assert [spec.name for spec, _ in start] == [name] or s.next_deadline() <= 60.0, \
        f"next run only at {s.next_deadline()}"


# command_endpoint checks right after start: Icinga's Checkable::ExecuteCheck (v2.13)
# reports "Remote Icinga instance ... is not connected" only when the endpoint is not
# syncing AND the instance started more than 300 s ago; inside that window it produces no
# result (the agents are still reconnecting after a restart).


class FakeNode:
    name = "m1"

    def __init__(self) -> None:
        self.connected_names: set[str] = set()
        self.originated: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[tuple[str, bytes, str]] = []

    def originate(self, method: str, params: dict[str, Any]) -> bool:
        self.originated.append((method, params))
        return True

    def send_to(self, endpoint: str, frame: bytes, method: str) -> bool:
        self.sent.append((endpoint, frame, method))
        return endpoint in self.connected_names


def test_no_unknown_result_for_an_agent_still_reconnecting_after_start():
    spec = CheckSpec("agent1", "dummy", service="disk", command_endpoint="agent1",
                     interval=60, max_check_attempts=1)
    started = time.time()
    scheduler = Scheduler([spec], local_endpoint="m1", zone_endpoints=["m1"],
                          started=started)
    node = FakeNode()
    checks = LocalChecks(node, scheduler, pool=None)

    async def main() -> None:
        start, _ = scheduler.due(started + 60, node.connected_names)
        assert [s.name for s, _ in start] == ["agent1!disk"]
        await checks._run(spec)     # one second after start, agent1 not yet back

    asyncio.run(main())
    states = [(p["cr"]["state"], p["cr"]["vars_after"]["state_type"], p["cr"]["output"])
              for _, p in node.originated]
    # max_check_attempts = 1: this is a HARD UNKNOWN for every command_endpoint check
    # whose spread offset falls before its agent reconnects.
    assert states == [], states


def test_own_results_carry_previous_hard_state():
    # Icinga's ProcessCheckResult sets cr.previous_hard_state (the hard state before the
    # last hard change) before the result goes out to the cluster. The router's own
    # results always carry 0: a HARD CRITICAL -> OK recovery reads "previous hard: OK".
    from checkers.messages import CheckOutcome

    spec = CheckSpec("h", "fake", service="s", interval=60, retry_interval=1,
                     max_check_attempts=2)
    scheduler = Scheduler([spec], local_endpoint="m1", zone_endpoints=["m1"], started=0.0)
    node = FakeNode()
    states = iter([2, 2, 0])

    def builtins(command, macros):
        s = next(states)
        now = time.time()
        return CheckOutcome(s, s, "out", [], now, now, command=command)

    checks = LocalChecks(node, scheduler, pool=None, builtins=builtins)

    async def main() -> None:
        for _ in range(3):
            start, _ = scheduler.due(scheduler.next_deadline(), ())
            assert [s.name for s, _ in start] == ["h!s"]
            await checks._run(spec)

    asyncio.run(main())
    crs = [p["cr"] for _, p in node.originated]
    assert [(c["state"], c["vars_after"]["state_type"]) for c in crs] == [(2, 0), (2, 1), (0, 1)]
    assert crs[-1]["previous_hard_state"] == 2, crs[-1]["previous_hard_state"]


def test_an_agent_away_after_the_first_five_minutes_is_unknown():
    spec = CheckSpec("agent1", "dummy", service="disk", command_endpoint="agent1",
                     interval=60, max_check_attempts=1)
    started = time.time() - 400
    scheduler = Scheduler([spec], local_endpoint="m1", zone_endpoints=["m1"],
                          started=started)
    node = FakeNode()
    checks = LocalChecks(node, scheduler, pool=None)

    async def main() -> None:
        start, _ = scheduler.due(time.time(), node.connected_names)
        assert [s.name for s, _ in start] == ["agent1!disk"]
        await checks._run(spec)

    asyncio.run(main())
    assert [(p["cr"]["state"], p["cr"]["output"]) for _, p in node.originated] == [
        (3, "Remote Icinga instance 'agent1' is not connected to 'm1'")]


# ResultStore: caps after a reload lowers them, and a result from the future.


def _cr(start: float, state: int = 0) -> dict:
    return {"state": state, "execution_start": start, "execution_end": start + 0.1,
            "output": f"at {start}"}


def test_lowered_max_results_is_reached_as_new_results_arrive():
    # reload.py sets max_results on the live store ("a smaller result view sheds its
    # oldest entries as new ones arrive"). One eviction per new entry keeps it at the old
    # size for ever: the lowered bound is never applied.
    store = ResultStore(max_results=100, max_per_zone=100)
    for i in range(100):
        store.update(f"h{i:03d}", None, _cr(1.0), "a", 1.0, "z")
    store.max_results = 10                         # what a reload does
    for i in range(100, 150):
        store.update(f"h{i:03d}", None, _cr(1.0), "a", 1.0, "z")
    assert len(store) <= 10, len(store)


def test_lowered_max_results_per_zone_is_reached():
    store = ResultStore(max_results=1000, max_per_zone=100)
    for i in range(100):
        store.update(f"h{i:03d}", None, _cr(1.0), "a", 1.0, "z")
    store.max_per_zone = 10
    for i in range(100, 150):
        store.update(f"h{i:03d}", None, _cr(1.0), "a", 1.0, "z")
    assert store.zone_count("z") <= 10, store.zone_count("z")


def test_result_from_the_future_does_not_pin_the_view():
    # Icinga's ProcessCheckResult: "Our current timestamp may be from the future (wrong
    # server time adjusted again). Allow overrides here." The view refuses every later
    # (correct) result until the wrong clock's time comes, while they are routed on.
    store = ResultStore()
    now = time.time()
    assert store.update("h", "s", _cr(now + 365 * 86400, state=2), "agent", now, "z")
    assert store.update("h", "s", _cr(now, state=0), "agent", now + 1, "z"), \
        "a current result was refused because the stored one is from the future"
    assert store.get("h", "s").cr["state"] == 0


def test_per_zone_cap_holds_when_a_host_moves_zone():
    # A stored host whose zone changes (objects.hosts edited and reloaded, a learned host
    # forgotten and learned by another zone) moves into the new zone without the cap
    # being checked: that zone ends up above max_results_per_zone.
    store = ResultStore(max_results=1000, max_per_zone=10)
    for i in range(10):
        store.update(f"b{i}", None, _cr(1.0), "x", 1.0, "zb")
    for i in range(10):
        store.update(f"a{i}", None, _cr(1.0), "x", 1.0, "za")
    for i in range(10):                           # the a-hosts now belong to zb
        store.update(f"a{i}", None, _cr(2.0), "x", 2.0, "zb")
    assert store.zone_count("zb") <= 10, store.zone_count("zb")
