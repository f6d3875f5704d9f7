"""SendQueue: water marks, coalescing order, hard limit."""

from __future__ import annotations

import pytest

from router.transport.sendqueue import Ledger, QueueLimits, SendQueue

LIMITS = QueueLimits(high_bytes=100, low_bytes=40, high_messages=10, low_messages=4,
                     hard_bytes=300)


def frame(n: int, tag: str = "x") -> bytes:
    return (tag * n).encode()[:n]


def test_fifo_and_counters():
    q = SendQueue(LIMITS)
    q.put(b"aa", "m1")
    q.put(b"bbb", "m2")
    assert (q.bytes, q.messages, len(q)) == (5, 2, 2)
    frames, methods = q.take(1)
    assert frames == [b"aa"] and methods == ["m1"]  # at least one frame even over budget
    frames, methods = q.take(100)
    assert frames == [b"bbb"] and (q.bytes, q.messages) == (0, 0)


def test_congestion_by_bytes_and_release_at_low_water():
    q = SendQueue(LIMITS)
    assert not q.put(frame(60), "m")
    assert q.put(frame(50), "m")  # crosses 100 bytes: becomes congested now
    assert q.congested and q.high_water_events == 1
    assert not q.put(frame(10), "m")  # already congested: no second notification
    q.take(60)
    assert q.congested and not q.update_congestion()  # 60 bytes > low water 40
    q.take(50)
    assert q.update_congestion() and not q.congested


def test_congestion_by_message_count():
    q = SendQueue(LIMITS)
    for _ in range(9):
        assert not q.put(b"a", "m")
    assert q.put(b"a", "m")
    q.take(6)
    assert q.update_congestion()  # 4 messages, 4 bytes: at low water


def test_coalescing_only_while_congested_and_keeps_stamp_order():
    q = SendQueue(LIMITS)
    q.put(b"r1-old", "cr", key=("h", "s"))
    q.put(b"other", "cr", key=("h", "t"))
    assert q.coalesced == 0 and q.messages == 2  # not congested: both kept
    q.put(frame(100), "bulk")
    assert q.congested
    q.put(b"r1-new", "cr", key=("h", "s"))
    assert q.coalesced == 1
    frames, _ = q.take(10_000)
    # The superseded frame is gone and the new one sits at the tail, after the bulk
    # frame that was queued before it (receivers drop older ts).
    assert frames == [b"other", frame(100), b"r1-new"]
    assert q.bytes == 0 and q.messages == 0


def test_coalescing_after_older_frame_was_sent():
    q = SendQueue(LIMITS)
    q.put(frame(100), "bulk")
    q.put(b"r1", "cr", key=("h", None))
    q.take(1000)
    q.put(frame(100), "bulk")
    q.put(b"r2", "cr", key=("h", None))
    assert q.coalesced == 0
    assert q.take(1000)[0] == [frame(100), b"r2"]


def test_hard_limit_and_clear():
    q = SendQueue(LIMITS)
    for _ in range(4):
        q.put(frame(80), "m")
    assert q.over_hard_limit
    assert q.clear() == [(frame(80), "m")] * 4  # unsent frames go back to the caller
    assert (q.bytes, q.messages, q.congested) == (0, 0, False)


@pytest.mark.parametrize("kwargs", [dict(low_bytes=100, high_bytes=100),
                                    dict(low_messages=10, high_messages=10),
                                    dict(high_bytes=400, hard_bytes=300)])
def test_invalid_limits(kwargs):
    params = dict(high_bytes=100, low_bytes=40, high_messages=10, low_messages=4,
                  hard_bytes=300)
    params.update(kwargs)
    with pytest.raises(ValueError):
        QueueLimits(**params)


def test_ledger_keeps_written_logged_frames_until_confirmed():
    q = SendQueue(QueueLimits())
    ledger = Ledger()
    q.put(b"a", "event::CheckResult", ("h", "s1"), ts=1.0)
    q.put(b"hb", "event::Heartbeat")                        # not logged: no ts
    q.put(b"b", "event::CheckResult", ("h", "s2"), ts=2.0)
    q.put(b"c", "event::CheckResult", ("h", "s3"), ts=3.0)
    frames, _ = q.take(2, ledger)                           # written: a, hb
    assert frames == [b"a", b"hb"] and len(ledger) == 1
    q.take(100, ledger)
    assert len(ledger) == 3 and ledger.bytes == 3
    ledger.confirm(2.0)                                     # the peer has up to ts 2
    assert ledger.drain() == [(3.0, b"c", "event::CheckResult")]
    assert len(ledger) == 0 and ledger.bytes == 0


def test_ledger_is_bounded_and_counts_what_it_let_go():
    ledger = Ledger(max_bytes=10)
    for i in range(5):
        ledger.add(float(i), b"xxxx", "event::CheckResult")
    assert ledger.bytes == 8 and ledger.overflowed == 3
    assert [ts for ts, _, _ in ledger.drain()] == [3.0, 4.0]
