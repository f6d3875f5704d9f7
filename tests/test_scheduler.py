"""Scheduler: Icinga's SDBM, HA authority, spreading, soft/hard states (pure, fake clock)."""

from __future__ import annotations

from router.features.scheduler import HARD, SOFT, CheckSpec, Scheduler, sdbm


def test_sdbm_matches_icinga_test_values():
    # icinga-protocol.md §8 (values computed from Icinga's Utility::SDBM on x86-64)
    assert sdbm("host1") == 7418874572877868777
    assert sdbm("host1!ping4") == 7399457511784168522
    assert sdbm("host1") % 2 == 1 and sdbm("host1!ping4") % 2 == 0


def test_sdbm_treats_high_bytes_as_signed_chars():
    # 'é' is 0xC3 0xA9: as signed chars -61 and -87, so the hash differs from unsigned.
    unsigned = 0
    for byte in "é".encode():
        unsigned = (byte + (unsigned << 6) + (unsigned << 16) - unsigned) & ((1 << 64) - 1)
    assert sdbm("é") != unsigned


def test_checks_are_spread_over_their_interval_and_stable():
    checks = [CheckSpec(f"h{i}", "dummy", service="s", interval=60) for i in range(200)]
    a = Scheduler(checks, local_endpoint="n1", zone_endpoints=["n1"], started=1000.0)
    b = Scheduler(checks, local_endpoint="n1", zone_endpoints=["n1"], started=1000.0)
    first = sorted(s.next_check for s in a.states.values())
    assert first == sorted(s.next_check for s in b.states.values())
    assert 1000.0 <= first[0] and first[-1] < 1060.0
    per_10s = [sum(1 for t in first if 1000 + 10 * k <= t < 1010 + 10 * k) for k in range(6)]
    assert min(per_10s) > 15  # no thundering herd


def test_due_runs_each_check_once_until_recorded():
    s = Scheduler([CheckSpec("h", "dummy", interval=10)], local_endpoint="n1",
                  zone_endpoints=["n1"], started=0.0)
    start, _ = s.due(100.0, [])
    assert [spec.name for spec, _ in start] == ["h"]
    assert s.due(200.0, [])[0] == []  # still running: not started twice
    s.record("h", 0, 201.0)
    assert s.next_deadline() == 211.0


def test_soft_then_hard_then_recovery():
    s = Scheduler([CheckSpec("h", "dummy", service="x", interval=60, retry_interval=5,
                             max_check_attempts=3)], local_endpoint="n1",
                  zone_endpoints=["n1"], started=0.0)
    seen = []
    for state in (2, 2, 2, 2, 0):
        now = s.next_deadline()
        assert [spec.name for spec, _ in s.due(now, [])[0]] == ["h!x"]
        before, after = s.record("h!x", state, now)
        seen.append((after["state"], after["state_type"], after["attempt"]))
    # Icinga 2.13 resets the attempt to 1 when the state becomes hard.
    assert seen == [(2, SOFT, 1), (2, SOFT, 2), (2, HARD, 1), (2, HARD, 1), (0, HARD, 1)]
    assert before == {"attempt": 1, "reachable": True, "state": 2, "state_type": HARD}


def test_retry_interval_while_soft():
    s = Scheduler([CheckSpec("h", "dummy", interval=60, retry_interval=5)],
                  local_endpoint="n1", zone_endpoints=["n1"], started=0.0)
    s.due(100.0, [])
    s.record("h", 2, 100.0)
    assert s.next_deadline() == 105.0


def test_ha_pair_splits_checks_and_hands_over():
    checks = [CheckSpec(f"host{i}", "dummy", interval=10) for i in range(100)]
    a = Scheduler(checks, local_endpoint="a", zone_endpoints=["a", "b"], started=0.0)
    b = Scheduler(checks, local_endpoint="b", zone_endpoints=["a", "b"], started=0.0)
    ran_a = {spec.name for spec, _ in a.due(50.0, ["b"])[0]}
    ran_b = {spec.name for spec, _ in b.due(50.0, ["a"])[0]}
    assert ran_a and ran_b and not ran_a & ran_b  # each check on exactly one member
    assert ran_a | ran_b == {c.name for c in checks}
    assert all((sdbm(n) % 2 == 0) for n in ran_a)  # sorted [a, b]: even hashes go to a
    for name in ran_a:
        a.record(name, 0, 50.0)
    # b goes away: a takes everything over, and says which ones changed hands.
    start, changes = a.due(200.0, [])
    assert {spec.name for spec, _ in start} == {c.name for c in checks}
    assert {name for name, owned in changes if owned} == ran_b


def test_cold_start_runs_nothing_while_alone_in_an_ha_zone():
    s = Scheduler([CheckSpec("h", "dummy", interval=1)], local_endpoint="a",
                  zone_endpoints=["a", "b"], started=0.0)
    assert s.due(10.0, [])[0] == []       # alone, 10 s after start: the peer may be running it
    assert [c.name for c, _ in s.due(40.0, [])[0]] == ["h"]  # after 30 s: we take over
