"""The master's view: the latest check result per host/service.

A node without a parent is where results end up; an operator wants to see what arrived
without a database behind it. Results are kept as the parsed ``cr`` dictionaries the
message already carried (no copy, no re-encoding), keyed by (host, service) with
``service`` None for host checks, so memory is one entry per checkable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(slots=True)
class StoredResult:
    host: str
    service: str | None
    cr: dict[str, Any]
    #: Endpoint the message arrived from (the hop, not necessarily the checker).
    received_from: str
    #: Our wall clock when it arrived.
    received_at: float

    def as_json(self) -> dict[str, Any]:
        cr = self.cr
        return {
            "host": self.host,
            "service": self.service,
            "state": cr.get("state"),
            "exit_status": cr.get("exit_status"),
            "output": cr.get("output"),
            "performance_data": cr.get("performance_data"),
            "check_source": cr.get("check_source"),
            "execution_start": cr.get("execution_start"),
            "execution_end": cr.get("execution_end"),
            "active": cr.get("active"),
            "received_from": self.received_from,
            "received_at": self.received_at,
        }


class ResultStore:
    """Latest ``cr`` per checkable, plus counters."""

    __slots__ = ("_results", "updates")

    def __init__(self) -> None:
        self._results: dict[tuple[str, str | None], StoredResult] = {}
        #: Results stored since start (including replaced ones).
        self.updates = 0

    def __len__(self) -> int:
        return len(self._results)

    def update(self, host: str, service: str | None, cr: dict[str, Any],
               received_from: str, received_at: float) -> bool:
        """Store ``cr`` unless an equal or newer execution is already stored.

        Returns True when stored. Icinga also ignores a result whose execution_start is
        older than the stored one (agents replaying their log send old results late).
        """
        key = (host, service)
        current = self._results.get(key)
        if current is not None:
            old_start = current.cr.get("execution_start")
            new_start = cr.get("execution_start")
            if isinstance(old_start, (int, float)) and isinstance(new_start, (int, float)) \
                    and new_start < old_start:
                return False
        self._results[key] = StoredResult(host, service, cr, received_from, received_at)
        self.updates += 1
        return True

    def get(self, host: str, service: str | None) -> StoredResult | None:
        return self._results.get((host, service))

    def select(self, host: str | None = None, service: str | None = None) -> Iterator[StoredResult]:
        """Results matching the filters, sorted by host then service."""
        for key in sorted(self._results, key=lambda k: (k[0], k[1] or "")):
            if host is not None and key[0] != host:
                continue
            if service is not None and key[1] != service:
                continue
            yield self._results[key]
