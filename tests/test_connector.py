"""Backoff: exponential caps with full jitter, never synchronised retries."""

from __future__ import annotations

from router.transport.connector import Backoff


def test_caps_grow_exponentially_up_to_the_maximum():
    b = Backoff(minimum=1.0, maximum=60.0)
    assert [b.cap(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_delay_spans_from_half_minimum_to_cap():
    b = Backoff(minimum=1.0, maximum=60.0)
    assert b.delay(5, rand=lambda: 0.0) == 0.5
    assert b.delay(5, rand=lambda: 1.0) == 32.0
    assert b.delay(100, rand=lambda: 1.0) == 60.0


def test_jitter_spreads_a_fleet():
    """5000 agents retrying after the same failure do not come back in lock-step."""
    import random

    rng = random.Random(7)
    b = Backoff(minimum=1.0, maximum=60.0)
    delays = [b.delay(4, rand=rng.random) for _ in range(5000)]
    buckets = [0] * 16
    for d in delays:
        buckets[min(15, int(d))] += 1
    assert max(buckets) < 5000 * 0.1  # no second gets more than a tenth of the fleet
    assert 0.5 <= min(delays) and max(delays) <= 16.0
