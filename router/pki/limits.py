"""Token buckets that keep enrollment from being a free CPU or disk sink (users.md P13/P16).

Pure: the caller passes the clock (``time.monotonic()``), so the tests need no sleeping.

- :class:`PerSourceLimit`: certificate requests one address may send per minute;
- :class:`Budget`: expensive steps (ticket checks, signatures) for the whole node, so that
  many addresses together cannot take the event loop away from every other peer.
"""

from __future__ import annotations

__all__ = ["Budget", "PerSourceLimit"]


class Budget:
    """One token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> bool:
        """Spend one token; False when there is none."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class PerSourceLimit:
    """``per_minute`` requests per source (bursts of as many), idle sources forgotten."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._sources: dict[str, Budget] = {}

    def allow(self, source: str, now: float) -> bool:
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._sources[source] = Budget(self.per_minute / 60.0,
                                                    float(self.per_minute), now)
        return bucket.take(now)

    def prune(self, now: float, idle: float = 120.0) -> None:
        """Forget sources not seen for ``idle`` seconds (their bucket is full again)."""
        self._sources = {k: b for k, b in self._sources.items() if now - b.at < idle}

    def __len__(self) -> int:
        return len(self._sources)
