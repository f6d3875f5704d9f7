"""Which ``log::SetLogPosition`` values are receipts (sans I/O): Icinga's replay marker,
a whole second, must never confirm frames, and our own stamps are never whole seconds."""

from __future__ import annotations

import math
import types

import pytest

from router.node import core
from router.node.core import Node
from router.node.housekeeping import LOG_POSITION_INTERVAL, LOG_POSITIONS_PER_SECOND, Housekeeping
from router.node.replay import receipt_position

LAST = 1_796_546_894.324318


@pytest.mark.parametrize("value", [
    1_796_546_895.0,            # Icinga's live log file: now + 1, a whole second
    1_796_546_000,              # a rotated log file's name, an int on the wire
    LAST + 1e-3,                # newer than anything we stamped
    math.nan, math.inf, -math.inf,
    True, "1796546894.1", None, [LAST],
])
def test_not_a_receipt(value):
    assert receipt_position(value, LAST) is None


@pytest.mark.parametrize("value", [LAST, LAST - 12.25, 0.5])
def test_a_stamp_of_ours_is_a_receipt(value):
    assert receipt_position(value, LAST) == value


def test_stamps_are_never_whole_seconds(monkeypatch):
    clock = iter([1_796_546_900.0, 1_796_546_900.0, 1_796_546_901.0, 1_796_546_901.5])
    monkeypatch.setattr(core.time, "time", lambda: next(clock))
    node = types.SimpleNamespace(_last_stamp=0.0)
    stamps = [Node.stamp(node) for _ in range(4)]  # type: ignore[arg-type]
    assert not any(s.is_integer() for s in stamps)
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    assert stamps[-1] == 1_796_546_901.5
    assert all(receipt_position(s, stamps[-1]) == s for s in stamps)


class _Loop:
    """Time moves only when the test says; call_later keeps each timer's latest arming,
    by the name of its callback."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: dict[str, tuple[float, object]] = {}

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback):
        self.pending[callback.__name__] = (delay, callback)
        return types.SimpleNamespace(cancel=lambda: None)


@pytest.mark.parametrize("peers, per_peer", [(100, 8), (10_000, 2)])
def test_log_positions_go_to_each_peer_every_5_s_but_500_a_second_at_most(peers, per_peer):
    loop = _Loop()
    sent: list[str] = []
    host = types.SimpleNamespace(
        loop=loop, connections={f"agent{i}": object() for i in range(peers)},
        log_position_interval=LOG_POSITION_INTERVAL,
        receipts=types.SimpleNamespace(confirm_position=lambda endpoint, received: received),
        # every peer's position moves all the time: each round confirms it anew
        endpoint_stats=lambda name: types.SimpleNamespace(remote_log_position=loop.now + 1),
        send_to=lambda endpoint, frame, method: sent.append(endpoint))
    housekeeping = Housekeeping(host)          # type: ignore[arg-type]
    housekeeping.start()
    while loop.now < 40.0:
        delay, callback = loop.pending["_on_log_position_tick"]
        loop.now += delay
        callback()
    assert len(sent) / 40.0 <= LOG_POSITIONS_PER_SECOND * 1.05
    assert abs(sent.count("agent0") - per_peer) <= 1
    assert set(sent) == set(host.connections)
