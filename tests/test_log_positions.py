"""Which ``log::SetLogPosition`` values are receipts (sans I/O): Icinga's replay marker,
a whole second, must never confirm frames, and our own stamps are never whole seconds."""

from __future__ import annotations

import math
import types

import pytest

from router.node import core
from router.node.core import Node
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
