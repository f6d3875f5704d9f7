"""The result writers' metrics, from ``WritersService.snapshot()`` (docs/writers.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.ops.metrics import MetricFamily, family

__all__ = ["writer_families"]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def writer_families(snapshot: Mapping[str, Mapping[str, Any]]) -> list[MetricFamily]:
    """``router_writer_*`` for every configured writer."""
    points, backlog, lag, active, errors = [], [], [], [], []
    for name, s in sorted(snapshot.items()):
        label = {"writer": name}
        for result, key in (("written", "written"), ("evicted", "evicted"),
                            ("dropped", "dropped"), ("invalid", "invalid")):
            points.append(({"writer": name, "result": result}, _number(s.get(key))))
        backlog.append((label, _number(s.get("backlog"))))
        lag.append((label, _number(s.get("lag_seconds"))))
        active.append((label, 1.0 if s.get("active") else 0.0))
        reasons = dict(s.get("errors") or {})
        if s.get("queue_failed"):
            reasons["queue"] = reasons.get("queue", 0) + s["queue_failed"]
        for reason, n in sorted(reasons.items()):
            errors.append(({"writer": name, "reason": str(reason)}, _number(n)))
    return [family("router_writer_points_total", points),
            family("router_writer_backlog", backlog),
            family("router_writer_lag_seconds", lag),
            family("router_writer_active", active),
            family("router_writer_errors_total", errors)]
