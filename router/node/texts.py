"""What the node says: its rate-limited log, metric labels and the texts of its refusals."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from router.routing import METHODS, Topology


class RateLimitedLog:
    """At most one line per key and interval; says how many similar lines were held back.

    Handshake failures from a scanner or a misconfigured fleet can come by the thousand per
    second (users.md P12: logs flooding the disk); the counters keep every event, the log
    keeps the operator's attention.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[Any, tuple[float, int]] = {}

    def log(self, key: Any, level: int, msg: str, *args: Any, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = (now, 0)
        if suppressed:
            msg = msg + " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, msg, *args)


def method_label(method: str | None) -> str:
    """Metric label for a method: unknown names collapse to "other" so that a peer cannot
    create an unbounded number of series (or dictionary keys) by inventing methods."""
    if method is None:
        return "(none)"
    return method if method in METHODS else "other"


#: Why a session timed out (``PeerTimedOut.reason``), for the log.
TIMEOUT_TEXT = {
    "liveness": "no data received within the liveness timeout",
    "anonymous": "anonymous connection closed after its grace period",
    "first_byte": "no data received after the TLS handshake",
}

#: Why routing refused a message (``RouteDecision.reason``), for the log and the answer.
REFUSAL_TEXT = {
    "unknown_method": "unknown method",
    "no_params": "message has no params",
    "not_allowed": "this message may not flow in this direction",
    "unknown_object": "object's zone is unknown",
    "wrong_zone": "object belongs to another zone",
    "not_routed": "not routed by this node",
    "too_many_learned": "the zone owns objects.max_learned_per_zone learned hosts already",
}


def http_refusal(status_listen: tuple[str, int] | None) -> bytes:
    """What an HTTP client on the cluster port gets: a 400 naming the status API."""
    where = (f"http://{status_listen[0]}:{status_listen[1]}/v1/status" if status_listen
             else "disabled (status_listen = none)")
    body = (f"This port speaks the Icinga 2 cluster protocol (JSON-RPC over TLS).\n"
            f"The router's status API is {where}\n").encode()
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


def name_list(names: Iterable[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 4995 more``: a satellite with 5 000 agent
    zones must not write a 60 KB log line."""
    names = list(names)
    if not names:
        return "-"
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def describe_topology(topology: Topology) -> str:
    """One line for the start-up log."""
    parent = topology.parent_zone or "-"
    children = name_list(topology.child_zones)
    count = f"{len(topology.child_zones)} child zones" if topology.child_zones else "child zones"
    return (f"endpoint {topology.local_endpoint} in zone {topology.local_zone} "
            f"(parent {parent}; {count} {children})")


__all__ = ["describe_topology", "http_refusal", "method_label", "name_list", "RateLimitedLog",
           "REFUSAL_TEXT", "TIMEOUT_TEXT"]
