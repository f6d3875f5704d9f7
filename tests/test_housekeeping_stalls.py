"""The read-stall watchdog looks at a slice of the sessions each tick (sans sockets).

With 10 000 idle agents every session qualified for the FIONREAD look at once, and the
whole check held the loop 30-50 ms every 5 s (issue 22, measured inside router serve);
a fifth of them each second still up to 31 ms, so a round is cut into READ_STALL_SLICES
ticks. Each session is still looked at once per READ_STALL_CHECK_INTERVAL, and still
needs two sightings with no read in between before it is flagged.
"""

from __future__ import annotations

from types import SimpleNamespace

from router.node.housekeeping import READ_STALL_CHECK_INTERVAL, READ_STALL_SLICES, Housekeeping

TICK = READ_STALL_CHECK_INTERVAL / READ_STALL_SLICES


class Session:
    def __init__(self, name: str, unread: int = 0) -> None:
        self.endpoint = self.identity = name
        self.address = "127.0.0.1:1"
        self.state = "open"
        self.reading_paused = False
        self.parked = False
        self.blocked_by = 0
        self.last_read_at = 0.0
        self.unread = unread
        self.looked_at = 0
        self.restarted = 0

    def unread_bytes(self) -> int:
        self.looked_at += 1
        return self.unread

    def restart_reading(self) -> None:
        self.restarted += 1


def _housekeeping(sessions: list[Session]) -> Housekeeping:
    host = SimpleNamespace(connections={s.endpoint: s for s in sessions}, anonymous=set(),
                           reads=SimpleNamespace(waiting=0),
                           ratelog=SimpleNamespace(log=lambda *a, **k: None))
    return Housekeeping(host)  # type: ignore[arg-type]


def test_each_tick_checks_a_slice_and_each_session_once_a_round() -> None:
    per_tick = 3
    sessions = [Session(f"agent{i}") for i in range(per_tick * READ_STALL_SLICES)]
    hk = _housekeeping(sessions)
    now = 100.0
    for tick in range(READ_STALL_SLICES):
        hk._check_stall_slice(now + tick * TICK)
        assert sum(s.looked_at for s in sessions) == per_tick * (tick + 1)
    assert all(s.looked_at == 1 for s in sessions)
    hk._check_stall_slice(now + READ_STALL_CHECK_INTERVAL - TICK / 2)   # next round not due
    assert all(s.looked_at == 1 for s in sessions)
    hk._check_stall_slice(now + READ_STALL_CHECK_INTERVAL)      # the next round starts
    assert sum(s.looked_at for s in sessions) == per_tick * READ_STALL_SLICES + per_tick


def test_a_stuck_session_is_flagged_at_its_second_look_across_rounds() -> None:
    stuck = Session("stuck", unread=100)
    others = [Session(f"agent{i}") for i in range(9)]
    hk = _housekeeping([stuck, *others])
    for tick in range(2 * READ_STALL_SLICES):
        hk._check_stall_slice(100.0 + tick * TICK)
    assert stuck.looked_at == 2 and stuck.restarted == 1 and hk.read_stalls == 1
    assert stuck not in hk._stall_suspects
    stuck.state = "closed"                  # a closed suspect is not kept
    hk._stall_suspects[stuck] = 0.0
    hk._check_stall_slice(100.0 + 2 * READ_STALL_CHECK_INTERVAL)
    assert stuck not in hk._stall_suspects
