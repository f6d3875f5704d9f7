"""What a running node shows: the /v1/status document, /metrics and the result view.

Built on demand from the node's live state (nothing here runs per message). The schema is
documented in docs/status-api.md; the metric names come from ``router.ops.metrics.CATALOG``;
``/metrics`` is rendered by prometheus_client (router.ops.exposition).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from router import __version__
from router.ops.exposition import metrics_route
from router.ops.http import Route, json_response, text_response
from router.ops.metrics import MetricFamily, family, process_families, process_info
from router.node.stats import BYTES_IN, BYTES_OUT, MSGS_IN, MSGS_OUT
from router.node.writerstats import writer_families
from router.routing import Relation

if TYPE_CHECKING:  # pragma: no cover
    from router.node.core import Node


def role(node: Node) -> str:
    topology = node.topology
    if topology.parent_zone is None:
        return "master"
    return "satellite" if topology.child_zones else "agent"


def _addr(pair: tuple[str, int] | None, port: int | None = None) -> str | None:
    if pair is None:
        return None
    return f"{pair[0]}:{port if port is not None else pair[1]}"


def _endpoint_relation(node: Node, name: str) -> str:
    relation = node.topology.relation(name)
    return relation.name.lower() if relation is not None else "other"


def connection_states(node: Node) -> dict[str, int]:
    states = {"handshaking": 0, "anonymous": 0, "established": 0}
    for conn in node.all_connections:
        if conn.state == "handshaking":
            states["handshaking"] += 1
        elif conn.state == "open" and conn.peer is not None:
            states["established" if conn.endpoint is not None else "anonymous"] += 1
    if node.listener is not None and node.listener.lobby is not None:
        states["handshaking"] += len(node.listener.lobby)  # accepted, no first record yet
    return states


def zone_log_lag(node: Node, endpoints: list[str], now: float) -> float:
    """Icinga's CalculateZoneLag: for each endpoint that is not connected (or still
    replaying) and from which we ever received a ``ts``, now minus that ``ts``; the zone's
    lag is the largest. It tells how far behind the zone's messages are."""
    lag = 0.0
    for endpoint in endpoints:
        stats = node.stats.get(endpoint)
        if stats is None or not stats.remote_log_position:
            continue
        if endpoint in node.connected_names:
            continue
        lag = max(lag, now - stats.remote_log_position)
    return lag


def zones(node: Node) -> list[dict[str, Any]]:
    topology = node.topology
    now = time.time()
    out = []
    for name in topology.zone_names:
        spec = topology.zone(name)
        assert spec is not None
        others = [e for e in spec.endpoints if e != node.name]
        out.append({
            "name": name,
            "parent": spec.parent,
            "global": spec.global_,
            "relation": topology.zone_relation(name),
            # A session counts while the log is replayed to it (kept out of
            # connected_names meanwhile): as Icinga, connected with its lag (review).
            "connected": any(e in node.connections for e in others),
            "endpoints": list(spec.endpoints),
            "log_lag": zone_log_lag(node, others, now),
        })
    return out


def endpoints(node: Node, only: str | None = None) -> list[dict[str, Any]]:
    topology = node.topology
    now = node.loop.time()
    out = []
    names = topology.endpoint_names if only is None else (
        (only,) if topology.endpoint(only) is not None else ())
    for name in names:
        relation = topology.relation(name)
        stats = node.stats.get(name)
        conn = node.connections.get(name)
        queue = conn.queue if conn is not None else None
        entry: dict[str, Any] = {
            "name": name,
            "zone": topology.zone_of(name),
            "relation": relation.name.lower() if relation is not None else "other",
            "connected": relation is Relation.SELF or conn is not None,
            "direction": conn.direction if conn is not None else None,
            "remote_address": conn.address if conn is not None else None,
            "connected_since": stats.connected_since if stats is not None else None,
            "icinga_version": stats.icinga_version if stats is not None else None,
            "messages_received": sum(stats.received.values()) if stats else 0,
            "messages_sent": sum(stats.sent.values()) if stats else 0,
            "bytes_received": stats.bytes_received if stats else 0,
            "bytes_sent": stats.bytes_sent if stats else 0,
            "messages_received_per_second": stats.rates.rate(MSGS_IN, now) if stats else 0.0,
            "messages_sent_per_second": stats.rates.rate(MSGS_OUT, now) if stats else 0.0,
            "bytes_received_per_second": stats.rates.rate(BYTES_IN, now) if stats else 0.0,
            "bytes_sent_per_second": stats.rates.rate(BYTES_OUT, now) if stats else 0.0,
            # "is not None": an empty SendQueue is falsy (__len__).
            "send_queue_bytes": (queue.bytes + conn.write_buffer_size  # type: ignore[union-attr]
                                 if queue is not None else 0),
            "send_queue_messages": len(queue) if queue is not None else 0,
            "last_message_received": stats.last_message_received if stats else None,
            "last_message_sent": stats.last_message_sent if stats else None,
            "refused": sum(stats.refused.values()) if stats else 0,
            "coalesced": stats.coalesced if stats else 0,
            "dropped": stats.dropped if stats else 0,
            "confirmed_log_position": stats.confirmed_log_position if stats else 0.0,
        }
        out.append(entry)
    return out


STATUS_SECTIONS = ("node", "zones", "endpoints", "connections", "totals", "process",
                   "config_zones", "writers")
"""Top-level keys of /v1/status, in document order; ``?sections=`` picks a subset."""


def status_document(node: Node, status_port: int | None = None,
                    listen_port: int | None = None, sections: tuple[str, ...] = STATUS_SECTIONS,
                    endpoint: str | None = None) -> dict[str, Any]:
    """The /v1/status document, or the named ``sections`` of it.

    The zones and endpoints sections grow with the cluster (5 000 agents: 5 000 entries
    each); a poller that only wants the connection counts asks for ``connections`` and does
    not stall the event loop for the rest. ``endpoint`` restricts the endpoints section to
    that one endpoint.
    """
    config = node.config
    now = time.time()
    all_stats = node.stats.values()
    builders: dict[str, Callable[[], Any]] = {
        "node": lambda: {
            "name": node.name,
            "zone": node.topology.local_zone,
            "role": role(node),
            "version": __version__,
            "started": node.started,
            "uptime": now - node.started,
            "listen": _addr(config.listen, listen_port),
            "status_listen": _addr(config.status_listen, status_port),
        },
        "zones": lambda: zones(node),
        "endpoints": lambda: endpoints(node, endpoint),
        "connections": lambda: connection_states(node),
        "totals": lambda: {
            "messages_received": sum(sum(s.received.values()) for s in all_stats),
            "messages_sent": sum(sum(s.sent.values()) for s in all_stats),
            "messages_refused": sum(sum(s.refused.values()) for s in all_stats),
            "handshake_failures": node.handshake_failures.total(),
            "check_results": node.check_results_received,
            "stale_dropped": node.stale_dropped,
            "objects_learned": node.objects.learned,
            "results_stored": len(node.results) if node.results is not None else None,
        },
        "process": process_info,
        "config_zones": lambda: config_zones(node),
        "writers": lambda: node.writers.snapshot() if node.writers is not None else None,
    }
    return {name: builders[name]() for name in STATUS_SECTIONS if name in sections}


def config_zones(node: Node) -> list[dict[str, Any]] | None:
    """The zones config sync holds (docs/config-sync.md); None when it is off."""
    return node.configsync.status() if node.configsync is not None else None


def parse_sections(text: str | None) -> tuple[str, ...]:
    """``?sections=a,b`` as a tuple; ValueError naming an unknown section."""
    if text is None or not text.strip():
        return STATUS_SECTIONS
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in STATUS_SECTIONS]
    if unknown:
        raise ValueError(f"unknown section {unknown[0]!r}; known: {', '.join(STATUS_SECTIONS)}")
    return names


def metric_families(node: Node) -> list[MetricFamily]:
    now = node.loop.time()
    topology = node.topology
    fams: list[MetricFamily] = []
    fams.append(family("router_info", [({
        "endpoint": node.name, "zone": topology.local_zone, "role": role(node),
        "version": __version__}, 1)]))
    fams.append(family("router_start_time_seconds", [({}, node.started)]))
    fams.append(family("router_connections", [
        ({"state": state}, n) for state, n in connection_states(node).items()]))
    peer_connected = []
    for name in topology.endpoint_names:
        relation = _endpoint_relation(node, name)
        value = 1 if relation == "self" or name in node.connections else 0
        peer_connected.append(({"endpoint": name, "zone": topology.zone_of(name) or "",
                                "relation": relation}, value))
    fams.append(family("router_peer_connected", peer_connected))
    fams.append(family("router_zone_connected", [
        ({"zone": z["name"], "relation": z["relation"]},
         1 if (z["connected"] or (z["relation"] == "local" and len(z["endpoints"]) == 1))
         else 0)
        for z in zones(node) if not z["global"]]))
    fams.append(node.handshake_failures.to_family("router_handshake_failures_total"))
    admission = node.admission
    fams += [
        family("router_unauthenticated_connections", [({}, admission.pending)]),
        family("router_connections_accepted_total", [({}, admission.admitted)]),
        family("router_unauthenticated_evicted_total", [
            ({"reason": r}, n) for r, n in sorted(admission.evicted.items())]),
        family("router_handshakes_in_progress", [({}, admission.handshaking)]),
        family("router_handshakes_waiting", [({}, admission.waiting)]),
        family("router_handshake_waits_total", [({}, admission.handshake_waits)]),
        family("router_handshakes_rate_limited_total", [({}, admission.rate_limited)]),
        family("router_admission_deferred_total", [({}, node.turn_budget.deferred)]),
        family("router_admission_deferred_turns_total", [({}, node.turn_budget.deferred_turns)]),
    ]
    connector = getattr(node, "connector", None)
    if connector is not None:
        fams.append(family("router_connect_attempts_total", [
            ({"endpoint": k}, v) for k, v in sorted(connector.attempts.items())]))
        fams.append(family("router_connect_failures_total", [
            ({"endpoint": k}, v) for k, v in sorted(connector.failures.items())]))
    listener = getattr(node, "listener", None)
    if listener is not None:
        fams.append(family("router_accept_errors_total", [
            ({"reason": k}, v) for k, v in sorted(listener.errors.items())]))
        fams.append(family("router_connections_rejected_total", [
            ({"reason": k}, v) for k, v in sorted(listener.rejected.items())]))
    fams.append(family("router_disconnects_total", [
        ({"endpoint": "-", "reason": key[0]}, v) for key, v in node.disconnects.items()]))

    received, sent, refused, bytes_in, bytes_out = [], [], [], [], []
    rate_in, rate_out, q_bytes, q_msgs, coalesced, congested = [], [], [], [], [], []
    unconfirmed: list[tuple[dict[str, str], float]] = []
    unprotected: list[tuple[dict[str, str], float]] = []
    for name, stats in sorted(node.stats.items()):
        label = "-" if name.startswith("(") else name
        # one label set shared by this endpoint's samples: a scrape at 5 000 endpoints
        # builds some 70 000 samples, and a dict each was ten dicts per endpoint
        ep = {"endpoint": label}
        for method, n in sorted(stats.received.items()):
            received.append(({"endpoint": label, "method": method}, n))
        for method, n in sorted(stats.sent.items()):
            sent.append(({"endpoint": label, "method": method}, n))
        for (method, reason), n in sorted(stats.refused.items()):
            refused.append(({"endpoint": label, "method": method, "reason": reason}, n))
        bytes_in.append((ep, stats.bytes_received))
        bytes_out.append((ep, stats.bytes_sent))
        rate_in.append((ep, stats.rates.rate(MSGS_IN, now)))
        rate_out.append((ep, stats.rates.rate(MSGS_OUT, now)))
        coalesced.append((ep, stats.coalesced))
        conn = node.connections.get(name)
        queue = conn.queue if conn is not None else None
        has_queue = queue is not None      # an empty SendQueue is falsy (__len__)
        q_bytes.append((ep,
                        (queue.bytes + conn.write_buffer_size) if has_queue else 0))  # type: ignore[union-attr]
        q_msgs.append((ep, len(queue) if has_queue else 0))  # type: ignore[arg-type]
        congested.append((ep, stats.congested
                          + (queue.high_water_events if has_queue else 0)))  # type: ignore[union-attr]
        ledger = conn.ledger if conn is not None else None
        unconfirmed.append((ep, ledger.bytes if ledger is not None else 0))
        unprotected.append((ep, stats.unconfirmed_overflow
                            + (ledger.overflowed if ledger is not None else 0)))
    fams += [
        family("router_messages_received_total", received),
        family("router_messages_sent_total", sent),
        family("router_messages_refused_total", refused),
        family("router_bytes_received_total", bytes_in),
        family("router_bytes_sent_total", bytes_out),
        family("router_messages_received_per_second", rate_in),
        family("router_messages_sent_per_second", rate_out),
        family("router_check_results_total", [({}, node.check_results_received)]),
        family("router_send_queue_bytes", q_bytes),
        family("router_send_queue_messages", q_msgs),
        family("router_send_queue_coalesced_total", coalesced),
        family("router_send_queue_congested_total", congested),
        family("router_unconfirmed_bytes", unconfirmed),
        family("router_unconfirmed_overflow_total", unprotected),
        family("router_log_positions_ignored_total", [
            ({"endpoint": "-" if n.startswith("(") else n}, s.log_positions_ignored)
            for n, s in sorted(node.stats.items()) if s.log_positions_ignored]),
        family("router_peer_throttled_total", [
            ({"endpoint": "-" if n.startswith("(") else n}, s.throttled)
            for n, s in sorted(node.stats.items()) if s.throttled]),
        family("router_peer_throttled_seconds_total", [
            ({"endpoint": "-" if n.startswith("(") else n}, s.throttled_seconds)
            for n, s in sorted(node.stats.items()) if s.throttled]),
        family("router_slow_consumer_disconnects_total", [
            ({"endpoint": "-"}, node.disconnects.get(("slow_consumer",)))]),
        family("router_reading_paused", [
            ({}, sum(1 for c in node.all_connections if c.reading_paused))]),
        family("router_read_waiting", [({}, node.reads.waiting)]),
        family("router_read_deferred_turns_total", [({}, node.reads.deferred_turns)]),
        family("router_read_stalls_total", [({}, node.read_stalls)]),
        family("router_objects_learned", [({}, node.objects.learned)]),
        family("router_objects_learn_refused_total", [
            ({"zone": z}, n) for z, n in sorted(node.objects.learn_refused.items())]),
        family("router_check_results_stored", [
            ({}, len(node.results) if node.results is not None else 0)]),
        family("router_check_results_evicted_total", [
            ({"zone": z}, n) for z, n in sorted(
                node.results.evicted.items() if node.results is not None else ())]),
    ]
    fams.append(_histogram("router_tls_handshake_received_bytes",
                           node.handshake_received.data()))
    fams.append(_histogram("router_tls_handshake_sent_bytes", node.handshake_sent.data()))
    fams += node.enrollment.families()
    if node.replay is not None:
        fams += replay_families(node)
    if node.writers is not None:
        fams += writer_families(node.writers.snapshot())
    pool = node.executor.pool if node.executor is not None else (
        node.checks.pool if node.checks is not None else None)
    if pool is not None:
        fams += checker_families(pool.stats())
    if node.checks is not None:
        fams += scheduler_families(node.checks.stats())
    if node.configsync is not None:
        fams.append(family("router_config_updates_total", [
            ({"direction": d, "result": r}, n)
            for (d, r), n in sorted(node.configsync.updates.items())]))
    fams += process_families()
    return fams


def _histogram(name: str, data: dict[str, Any]) -> MetricFamily:
    """A histogram family from {"buckets": {le: cumulative count}, "sum", "count"}."""
    fam = family(name)
    fam.suffixed = [("_bucket", {"le": le}, n) for le, n in data["buckets"].items()]
    fam.suffixed += [("_sum", {}, data["sum"]), ("_count", {}, data["count"])]
    return fam


def scheduler_families(stats: dict[str, Any]) -> list[MetricFamily]:
    """The local check scheduler (router.checking.LocalChecks.stats())."""
    return [
        family("router_checks_scheduled_total", [({}, stats["scheduled"])]),
        family("router_check_handovers_total", [({}, stats["handovers"])]),
        family("router_check_remote_sent_total", [({}, stats["remote_sent"])]),
        _histogram("router_check_schedule_latency_seconds", stats["latency"]),
    ]


def checker_families(stats: dict[str, Any]) -> list[MetricFamily]:
    """The executor pool's counters (checkers.pool.CheckerPool.stats())."""
    histogram = _histogram("router_check_queue_wait_seconds", stats["queue_wait_seconds"])
    return [
        family("router_checks_running", [({}, stats["running"])]),
        family("router_checks_queued", [({}, stats["queued"])]),
        family("router_checks_executed_total", [({}, stats["executed"])]),
        family("router_check_timeouts_total", [({}, stats["timeouts"])]),
        family("router_check_overflow_total", [({}, stats["overflow"])]),
        family("router_check_executors_lost_total", [({}, stats["lost"])]),
        family("router_check_executor_restarts_total", [({}, stats["restarts"])]),
        family("router_checks_expired_total", [({}, stats["expired"])]),
        histogram,
    ]


def replay_behind(zone: Mapping[str, Any], position: float | None) -> float:
    """Seconds between the newest record of a zone's log (``store.stats()["zones"]``) and
    an endpoint's confirmed ``position``; from the oldest record when it never confirmed
    one (a master not up yet): counted from 0 that read 56 years (review). 0 when empty."""
    newest = zone.get("newest_ts")
    if newest is None or not zone.get("records"):
        return 0.0
    start = position or zone.get("oldest_ts") or newest
    return float(max(0.0, newest - start))


def replay_families(node: Node) -> list[MetricFamily]:
    replay = node.replay
    assert replay is not None       # only called when the node keeps a replay log
    stats = replay.store.stats()
    positions = replay.store.positions()
    zones = stats["zones"]
    receipts = node.receipts
    lag = []
    for zone, endpoints in sorted(replay.zones.items()):
        figures = zones.get(zone, {})
        for endpoint in endpoints:
            lag.append(({"endpoint": endpoint}, replay_behind(figures, positions.get(endpoint))))
    return [
        family("router_replay_log_bytes", [({}, stats["bytes"])]),
        family("router_replay_log_records", [
            ({"zone": z}, v["records"]) for z, v in sorted(zones.items())]),
        family("router_replay_lag_seconds", lag),
        family("router_replay_evicted_total", [
            ({"zone": z}, v["evicted"]) for z, v in sorted(zones.items())]),
        family("router_replay_persisted_total", [({}, replay.persisted)]),
        family("router_replay_write_failures_total", [
            ({"reason": "storage"}, replay.writer.failed),
            ({"reason": "backlog"}, replay.writer.dropped),
            ({"reason": "too_large"}, stats["dropped"])]),
        family("router_replay_read_failures_total", [({}, replay.corrupt_reads)]),
        family("router_replay_replayed_total", [
            ({"endpoint": e}, n) for e, n in sorted(replay.replayed.items())]),
        family("router_replay_in_progress", [
            ({"endpoint": e}, n) for e, n in sorted(replay.replaying.items())]),
        family("router_replay_duplicates_dropped_total", [
            ({"peer": n}, s.duplicates_dropped) for n, s in sorted(node.stats.items())
            if s.duplicates_dropped]),
        family("router_processed_positions_saves_total", [
            ({"result": "ok"}, receipts.saves), ({"result": "failed"}, receipts.save_failures)]),
        family("router_processed_positions_unsaved_seconds", [
            ({}, receipts.unsaved_seconds(node.loop.time()))]),
    ]


#: Entries per /v1/objects/checkresults answer unless ``limit`` says otherwise, and most.
CHECKRESULTS_DEFAULT_LIMIT = 1000
CHECKRESULTS_MAX_LIMIT = 100_000


def page_bounds(query: dict[str, str]) -> tuple[int, int]:
    """``offset`` and ``limit`` of a listing; ValueError naming the bad parameter."""
    values = {}
    for name, default, top in (("offset", 0, None),
                               ("limit", CHECKRESULTS_DEFAULT_LIMIT, CHECKRESULTS_MAX_LIMIT)):
        text = query.get(name) or ""
        try:
            value = int(text) if text else default
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {text[:40]!r}") from None
        if value < 0 or (top is not None and value > top):
            raise ValueError(f"{name} must be between 0 and {top if top else 'any'}, "
                             f"got {value}")
        values[name] = value
    return values["offset"], values["limit"]


def checkresults_document(node: Node, host: str | None, service: str | None,
                          offset: int = 0, limit: int = CHECKRESULTS_DEFAULT_LIMIT
                          ) -> dict[str, Any]:
    if node.results is None:
        return {"enabled": False, "results": [],
                "note": "this node keeps no result view (results = off, or it has a parent)"}
    return {"enabled": True, "total": node.results.count(host, service),
            "offset": offset, "limit": limit,
            "results": [r.as_json() for r in node.results.select(host, service, offset,
                                                                   limit)]}


def routes(node: Node, ports: Callable[[], tuple[int | None, int | None]] | None = None
           ) -> dict[str, Route]:
    """Handlers for the status server (``/metrics`` negotiates its format, see
    router.ops.exposition)."""

    def status(query: dict[str, str]) -> tuple[int, str, bytes]:
        status_port, listen_port = ports() if ports else (None, None)
        try:
            sections = parse_sections(query.get("sections"))
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(status_document(node, status_port, listen_port, sections,
                                             query.get("endpoint") or None), query=query)

    def checkresults(query: dict[str, str]) -> tuple[int, str, bytes]:
        try:
            offset, limit = page_bounds(query)
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(checkresults_document(node, query.get("host"),
                                                   query.get("service"), offset, limit),
                             query=query)

    def health(query: dict[str, str]) -> tuple[int, str, bytes]:
        return text_response("ok\n", content_type="text/plain; charset=utf-8")

    return {"/v1/status": status, "/metrics": metrics_route(lambda: metric_families(node)),
            "/v1/objects/checkresults": checkresults, "/healthz": health}
