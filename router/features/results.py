"""The master's view: the latest check result per host/service, bounded and indexed.

A node without a parent is where results end up; an operator wants to see what arrived
without a database behind it. Results are kept as the parsed ``cr`` dictionaries the
message already carried (no copy, no re-encoding), keyed by (host, service) with
``service`` None for host checks, so memory is one entry per checkable.

Bounded (issue 16 S6): at most ``max_results`` entries in total and ``max_per_zone`` for
the hosts of one zone; a new entry beyond a cap evicts the least recently updated one (of
that zone, or overall), counted per zone. Without the caps one agent allowed to learn
hosts, or a misconfigured fleet, grows the view until the node runs out of memory.

Indexed: entries by host (a query for one host touches only that host's services) and a
sorted list of host names, so a query pages through ``offset``/``limit`` without sorting
every stored result on the event loop.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ResultStore", "StoredResult"]

Key = tuple[str, str | None]
#: Zone label of results whose host has no known zone (our own, route_local).
NO_ZONE = "-"


@dataclass(slots=True)
class StoredResult:
    host: str
    service: str | None
    cr: dict[str, Any]
    #: Endpoint the message arrived from (the hop, not necessarily the checker).
    received_from: str
    #: Our wall clock when it arrived.
    received_at: float
    #: Zone of the host (what the per-zone cap counts).
    zone: str = NO_ZONE

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


def _service_order(service: str | None) -> tuple[int, str]:
    """Host check first, then services by name."""
    return (0, "") if service is None else (1, service)


class ResultStore:
    """Latest ``cr`` per checkable, bounded in total and per zone, plus counters."""

    __slots__ = ("max_results", "max_per_zone", "_results", "_by_host", "_hosts",
                 "_by_zone", "updates", "evicted")

    def __init__(self, max_results: int = 1_000_000, max_per_zone: int = 250_000) -> None:
        self.max_results = max_results
        self.max_per_zone = max_per_zone
        #: Every entry, least recently updated first (dicts keep insertion order).
        self._results: dict[Key, StoredResult] = {}
        #: host -> its services (None: the host check)
        self._by_host: dict[str, set[str | None]] = {}
        #: Host names, sorted (the order of a listing).
        self._hosts: list[str] = []
        #: zone -> its entries, least recently updated first
        self._by_zone: dict[str, dict[Key, None]] = {}
        #: Results stored since start (including replaced ones).
        self.updates = 0
        #: zone -> entries evicted by a cap
        self.evicted: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._results)

    def zone_count(self, zone: str) -> int:
        entries = self._by_zone.get(zone)
        return 0 if entries is None else len(entries)

    def update(self, host: str, service: str | None, cr: dict[str, Any],
               received_from: str, received_at: float, zone: str | None = None) -> bool:
        """Store ``cr`` unless an equal or newer execution is already stored.

        Returns True when stored. Icinga also ignores a result whose execution_start is
        older than the stored one (agents replaying their log send old results late).
        """
        key = (host, service)
        zone_label = zone or NO_ZONE
        results = self._results
        current = results.get(key)
        if current is not None:
            old_start = current.cr.get("execution_start")
            new_start = cr.get("execution_start")
            # Icinga lets a newer result replace a stored one from the future (an agent's
            # clock was wrong): kept, it pinned the view until then (review).
            if isinstance(old_start, (int, float)) and isinstance(new_start, (int, float)) \
                    and new_start < old_start and old_start <= time.time():
                return False
            del results[key]                          # to the young end
            del self._by_zone[current.zone][key]
            if not self._by_zone[current.zone]:
                del self._by_zone[current.zone]
        else:
            services = self._by_host.get(host)
            if services is None:
                services = self._by_host[host] = set()
                bisect.insort(self._hosts, host)
            services.add(service)
        results[key] = StoredResult(host, service, cr, received_from, received_at, zone_label)
        in_zone = self._by_zone.setdefault(zone_label, {})
        in_zone[key] = None
        # Down to the caps, oldest first: after a reload lowered them (one eviction per
        # new entry never got there), or a stored host moved to a full zone (review).
        while len(in_zone) > self.max_per_zone:
            self._evict(next(iter(in_zone)))
        while len(results) > self.max_results:
            self._evict(next(iter(results)))
        self.updates += 1
        return True

    def _evict(self, key: Key) -> None:
        stored = self._results.pop(key)
        zone = stored.zone
        self.evicted[zone] = self.evicted.get(zone, 0) + 1
        in_zone = self._by_zone[zone]
        del in_zone[key]
        if not in_zone:
            del self._by_zone[zone]
        services = self._by_host[stored.host]
        services.discard(stored.service)
        if not services:
            del self._by_host[stored.host]
            hosts = self._hosts
            i = bisect.bisect_left(hosts, stored.host)
            del hosts[i]

    def get(self, host: str, service: str | None) -> StoredResult | None:
        return self._results.get((host, service))

    def count(self, host: str | None = None, service: str | None = None) -> int:
        """How many entries match the filters."""
        if host is not None:
            services = self._by_host.get(host, ())
            return len(services) if service is None else int(service in services)
        if service is None:
            return len(self._results)
        return sum(1 for services in self._by_host.values() if service in services)

    def select(self, host: str | None = None, service: str | None = None,
               offset: int = 0, limit: int | None = None) -> Iterator[StoredResult]:
        """Results matching the filters, sorted by host then service (host check first),
        from ``offset`` on, at most ``limit``. A host filter reads only that host's
        entries; without one the sorted host index is walked, never the whole view sorted.
        """
        if limit is not None and limit <= 0:
            return
        hosts = (host,) if host is not None else self._hosts
        skipped = produced = 0
        for name in hosts:
            services = self._by_host.get(name)
            if not services:
                continue
            if service is not None:
                chosen: list[str | None] = [service] if service in services else []
            elif offset > skipped and skipped + len(services) <= offset:
                skipped += len(services)      # a whole host before the page: no sort
                continue
            else:
                chosen = sorted(services, key=_service_order)
            for svc in chosen:
                if skipped < offset:
                    skipped += 1
                    continue
                yield self._results[(name, svc)]
                produced += 1
                if limit is not None and produced >= limit:
                    return
