"""The web console's document (``GET /v1/console``): the cluster's plumbing at a glance.

One compact JSON document the console page polls: the zone tree with each zone's health
(``all`` / ``some`` / ``none`` of its endpoints connected), the endpoints as rows of
columns (names once in ``endpoint_columns``, then one array per endpoint: at 5 000 agents
that is a third of the bytes of a list of objects, and cheaper to build), the totals and
their recent history (:class:`Sampler`), refusals and handshake failures by reason, the
check executors, the replay log per zone, the writers (when the status document has a
``writers`` section), pending certificate requests and the problems to show first.

It is built on demand from the node's live state, on the event loop; the parts that read
files or the replay log are cached (:class:`Caches`) so a console polling every few
seconds costs a 5 000-agent node a few tens of milliseconds per poll (perf/bench_console.py
measures it). The pure parts (:func:`zone_health`, :func:`find_problems`,
:class:`Sampler`) take plain values and are tested without a node.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from cryptography import x509

from router import __version__, pki
from router.node import report
from router.node.stats import BYTES_IN, BYTES_OUT, MSGS_IN, MSGS_OUT
from router.ops.metrics import RateSeries
from router.routing import Relation

if TYPE_CHECKING:  # pragma: no cover
    from router.node.core import Node
    from router.node.replay import ReplayManager
    from router.node.stats import Connection

__all__ = [
    "CERT_WARNING_DAYS", "ENDPOINT_COLUMNS", "LAG_WARNING_SECONDS", "REPLAY_CACHE_SECONDS",
    "SAMPLE_INTERVAL", "Caches", "Sampler", "Totals", "console_document", "find_problems",
    "list_pending", "pending_requests", "read_replay_log", "replay_by_zone",
    "replay_figures", "totals", "zone_health",
]

#: Columns of one row of ``endpoints`` (the document names them once).
ENDPOINT_COLUMNS = (
    "name", "zone", "relation", "connected", "direction", "connected_since",
    "icinga_version", "cert_expiry", "address", "msgs_in_1m", "msgs_out_1m",
    "bytes_in_1m", "bytes_out_1m", "queue_bytes", "queue_messages", "msgs_in",
    "msgs_out", "bytes_in", "bytes_out", "last_message_received", "refused",
    "replay_lag",
)
#: Seconds between two samples of the totals (the charts' resolution).
SAMPLE_INTERVAL = 2.0
#: Samples kept: ten minutes at ``SAMPLE_INTERVAL``.
SAMPLE_COUNT = 300
#: A zone whose log lag or replay lag is above this is "lagging" (a problem).
LAG_WARNING_SECONDS = 60.0
#: A certificate that expires within this many days is a problem.
CERT_WARNING_DAYS = 30
#: Problems listed one by one; the rest are counted (5 000 disconnected agents are one
#: line with a filter, not 5 000 lines).
MAX_PROBLEMS_PER_KIND = 20
#: Pending certificate requests listed in the document (the count is always exact).
MAX_REQUESTS_LISTED = 200
#: Seconds the replay log's per-zone figures are reused (an LMDB scan per zone).
REPLAY_CACHE_SECONDS = 5.0
_DIRECTION = {"outbound": "dialled", "inbound": "accepted"}


# --------------------------------------------------------------------------- pure parts


def zone_health(endpoints: Iterable[str], connected: set[str] | frozenset[str],
                me: str) -> str:
    """``all`` / ``some`` / ``none`` of a zone's endpoints other than ``me`` connected;
    ``self`` for a zone of only ourselves, ``empty`` for one without endpoints (global)."""
    total = up = 0
    mine = False
    for name in endpoints:
        if name == me:
            mine = True
            continue
        total += 1
        if name in connected:
            up += 1
    if total == 0:
        return "self" if mine else "empty"
    if up == total:
        return "all"
    return "some" if up else "none"


@dataclass(slots=True)
class Totals:
    """Lifetime counters summed over every endpoint, at one moment."""

    msgs_in: int = 0
    msgs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connected: int = 0
    queue_bytes: int = 0


class Sampler:
    """A ring buffer of the totals every ``interval`` seconds, as rates per second.

    ``add(t, totals)`` turns two consecutive lifetime counters into a per-second rate
    (a counter that went backwards, e.g. a fresh node, gives 0); the console asks for
    the samples newer than the last one it has (``since``), so each poll carries only
    what is new. Samples are lists ``[t, msgs_in/s, msgs_out/s, bytes_in/s, bytes_out/s,
    connected, queue_bytes]`` (``SAMPLE_COLUMNS``).
    """

    SAMPLE_COLUMNS = ("t", "msgs_in", "msgs_out", "bytes_in", "bytes_out", "connected",
                      "queue_bytes")

    def __init__(self, maxlen: int = SAMPLE_COUNT) -> None:
        self.samples: deque[list[float]] = deque(maxlen=maxlen)
        self._last: tuple[float, Totals] | None = None

    def add(self, t: float, now: Totals) -> list[float] | None:
        """Record ``now`` taken at ``t``; the new sample (None for the very first)."""
        if self.samples and t < self.samples[-1][0]:
            # The clock stepped back: the samples of the old timeline go (they would
            # sort after every new one, and the page asks for those after its newest).
            self.samples.clear()
        last, self._last = self._last, (t, now)
        if last is None:
            return None
        t0, before = last
        span = t - t0
        if span <= 0:
            return None

        def rate(a: int, b: int) -> float:
            return round(max(0, b - a) / span, 3)

        sample = [round(t, 3), rate(before.msgs_in, now.msgs_in),
                  rate(before.msgs_out, now.msgs_out), rate(before.bytes_in, now.bytes_in),
                  rate(before.bytes_out, now.bytes_out), now.connected, now.queue_bytes]
        self.samples.append(sample)
        return sample

    def since(self, t: float | None) -> list[list[float]]:
        """Samples taken after ``t``; all of them for None, or when ``t`` is after the
        newest (a page that polled before our clock stepped back: charts froze for as
        long as the step; review)."""
        if t is None or (self.samples and t > self.samples[-1][0]):
            return list(self.samples)
        return [s for s in self.samples if s[0] > t]


def find_problems(zones: list[dict[str, Any]], own_expiry: float | None,
                  peer_expiry: dict[str, float], reload_status: dict[str, Any] | None,
                  now: float, *, writers: Any = None,
                  lag_warning: float = LAG_WARNING_SECONDS,
                  cert_days: int = CERT_WARNING_DAYS,
                  limit: int = MAX_PROBLEMS_PER_KIND) -> dict[str, Any]:
    """What the banner lists first: ``{"items": [...], "counts": {kind: n}}``.

    Kinds: ``zone_down`` (no endpoint of a zone connected), ``zone_degraded`` (some),
    ``zone_lagging`` (log lag or replay lag over ``lag_warning``), ``cert_expiring``
    (ours or a connected peer's within ``cert_days``), ``reload_error`` (the last reload
    failed or was refused and none succeeded since), ``writer_lagging`` (a writer of the
    status document's ``writers`` section whose ``lag_seconds`` is over ``lag_warning``).
    Each item names what it links to (``zone``, ``endpoint``, ``reload`` or ``writer``);
    at most ``limit`` items per kind.
    """
    items: list[dict[str, Any]] = []
    counts: dict[str, int] = {}

    def add(kind: str, severity: str, text: str, **target: Any) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        if counts[kind] <= limit:
            items.append({"kind": kind, "severity": severity, "text": text, **target})

    for zone in zones:
        health = zone["health"]
        if health == "none":
            add("zone_down", "critical", f"zone {zone['name']} is disconnected "
                f"({zone['total']} endpoint{'s' if zone['total'] != 1 else ''})",
                zone=zone["name"])
        elif health == "some":
            add("zone_degraded", "warning", f"zone {zone['name']}: {zone['up']} of "
                f"{zone['total']} endpoints connected", zone=zone["name"])
        lag = max(zone.get("log_lag") or 0.0, zone.get("replay_lag") or 0.0)
        if lag > lag_warning:
            add("zone_lagging", "warning",
                f"zone {zone['name']} lags {_duration(lag)}", zone=zone["name"])
    horizon = now + cert_days * 86400
    expiring = sorted(((t, name) for name, t in peer_expiry.items() if t < horizon))
    if own_expiry is not None and own_expiry < horizon:
        expiring.insert(0, (own_expiry, ""))
    for t, name in expiring:
        whose = f"the certificate of {name}" if name else "our own certificate"
        verb = "expired" if t <= now else "expires in"
        when = _duration(now - t) + " ago" if t <= now else _duration(t - now)
        add("cert_expiring", "critical" if t - now < 7 * 86400 else "warning",
            f"{whose} {verb} {when}", endpoint=name or None)
    last = (reload_status or {}).get("last")
    last_ok = (reload_status or {}).get("last_ok")
    if last and last.get("result") in ("failed", "refused") and (
            last_ok is None or last_ok < last.get("finished", 0)):
        add("reload_error", "critical",
            f"reload ({last.get('trigger')}) {last.get('result')}: {last.get('error')}",
            reload=True)
    if isinstance(writers, dict):
        for name, figures in sorted(writers.items()):
            lag = figures.get("lag_seconds") if isinstance(figures, dict) else None
            if isinstance(lag, (int, float)) and lag > lag_warning:
                add("writer_lagging", "warning", f"writer {name} lags {_duration(lag)}",
                    writer=name)
    order = {"critical": 0, "warning": 1}
    items.sort(key=lambda p: order.get(p["severity"], 2))
    return {"items": items, "counts": counts}


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


# --------------------------------------------------------------------------- from a node


def totals(node: Node) -> Totals:
    """The node's lifetime counters and what waits to be written (the sampler's input)."""
    traffic = node.traffic
    out = Totals(traffic.msgs_in, traffic.msgs_out, traffic.bytes_in, traffic.bytes_out,
                 len(node.connections))
    queue_bytes = 0
    for conn in node.connections.values():
        queue, transport = conn.queue, conn.transport
        if queue is not None:
            queue_bytes += queue.bytes
        if transport is not None:
            queue_bytes += transport.get_write_buffer_size()
    out.queue_bytes = queue_bytes
    return out


#: What one sample may spend parsing new peers' certificates ahead (``Caches.warm``).
WARM_SECONDS = 0.002


@dataclass(slots=True)
class Caches:
    """What is expensive to read and changes slowly, kept between two polls."""

    #: connection -> its peer certificate's notAfter (Unix time; None: not parseable)
    peer_expiry: dict[Connection, float | None] = field(default_factory=dict)
    #: (mtime_ns of our certificate file, its notAfter)
    own_expiry: tuple[int, float | None] | None = None
    #: (request directory stamp, the listing as JSON rows, pending count)
    requests: tuple[int, list[dict[str, Any]], int] | None = None
    #: (loop time taken, per-zone replay figures)
    replay: tuple[float, dict[str, dict[str, Any]]] | None = None
    #: the sampler refreshes ``replay`` in a worker thread: never read it on the loop
    replay_in_background: bool = False
    #: the same for ``requests``
    requests_in_background: bool = False
    #: (the topology they were made from, endpoint parts, zone parts): _static_parts
    static: tuple[Any, list[tuple[str, str | None, str, int]], list[dict[str, Any]]] | None \
        = None

    def expiry_of(self, conn: Connection) -> float | None:
        if conn not in self.peer_expiry:
            der = conn.peer_certificate_der()
            value: float | None = None
            if der is not None:
                try:
                    value = x509.load_der_x509_certificate(der) \
                        .not_valid_after_utc.timestamp()
                except ValueError:
                    value = None
            self.peer_expiry[conn] = value
        return self.peer_expiry[conn]

    def warm(self, connections: Iterable[Connection], budget: int = 500,
             seconds: float = WARM_SECONDS) -> int:
        """Parse the certificates of up to ``budget`` new connections, for at most about
        ``seconds``, ahead of a poll (the sampler's timer calls it), so the first console
        view after a connection storm does not parse thousands at once. Returns how many
        were parsed. The time bound: 500 parses took 12 ms of the loop every 2 s for
        40 s after 10 000 agents connected, the p99 of their results (issue 22)."""
        done = 0
        deadline = time.perf_counter() + seconds
        for conn in connections:
            if done >= budget or (done % 16 == 15 and time.perf_counter() > deadline):
                break
            if conn not in self.peer_expiry:
                self.expiry_of(conn)
                done += 1
        return done

    def prune(self, alive: set[Connection]) -> None:
        for conn in [c for c in self.peer_expiry if c not in alive]:
            del self.peer_expiry[conn]

    def own_certificate_expiry(self, path: str) -> float | None:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return None
        if self.own_expiry is None or self.own_expiry[0] != mtime:
            try:
                value: float | None = pki.load_certificates(path)[0] \
                    .not_valid_after_utc.timestamp()
            except Exception:  # noqa: BLE001 - TLSSetupError, ValueError: no figure then
                value = None
            self.own_expiry = (mtime, value)
        return self.own_expiry[1]


def list_pending(store: pki.RequestStore) -> tuple[int, list[dict[str, Any]], int]:
    """(directory stamp, the newest ``MAX_REQUESTS_LISTED`` pending requests as rows, how
    many are pending): file reads and certificate parsing, so the sampler runs it in a
    worker thread (up to ``[pki] max_pending_requests`` files after a flood)."""
    stamp = store.stamp()
    rows: list[dict[str, Any]] = []
    pending = 0
    for request in store.list().requests:
        if request.signed:
            continue
        pending += 1
        try:
            cn = request.common_name
        except ValueError:
            cn = "?"
        rows.append({"fingerprint": request.fingerprint, "cn": cn,
                     "received": request.mtime, "ticket": bool(request.ticket)})
    rows.sort(key=lambda r: r["received"], reverse=True)
    return stamp, rows[:MAX_REQUESTS_LISTED], pending


def pending_requests(node: Node, caches: Caches) -> dict[str, Any]:
    """The request store's pending requests. When the sampler refreshes the listing in a
    worker thread (``caches.requests_in_background``) the latest listing is shown (until
    the first, the node's own pending count); otherwise it is read here, again only when
    the directory changed."""
    enrollment = node.enrollment
    if caches.requests_in_background:
        if caches.requests is None:
            return {"signer": enrollment.is_signer(), "pending": enrollment.pending,
                    "requests": []}
    elif caches.requests is None or caches.requests[0] != enrollment.store.stamp():
        caches.requests = list_pending(enrollment.store)
    _, rows, pending = caches.requests
    return {"signer": enrollment.is_signer(), "pending": pending, "requests": rows}


def read_replay_log(replay: ReplayManager) -> tuple[dict[str, Any], dict[str, float]]:
    """The replay log's per-zone counters and confirmed positions: LMDB reads, so the
    console's sampler runs this in a worker thread (router.node.consoleweb)."""
    return replay.store.stats(), replay.store.positions()


def replay_figures(replay: ReplayManager, stats: dict[str, Any],
                   positions: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per zone with a replay log: records kept (the backlog), bytes, and how far the
    furthest-behind endpoint of the zone is from the newest record (seconds)."""
    zones = stats.get("zones", {})
    out: dict[str, dict[str, Any]] = {}
    for zone, endpoints in replay.zones.items():
        figures = zones.get(zone, {})
        behind = {e: report.replay_behind(figures, positions.get(e)) for e in endpoints}
        out[zone] = {"records": figures.get("records", 0), "bytes": figures.get("bytes", 0),
                     "lag": max(behind.values(), default=0.0), "behind": behind,
                     "replaying": sum(replay.replaying.get(e, 0) for e in endpoints)}
    return out


def replay_by_zone(node: Node, caches: Caches) -> dict[str, dict[str, Any]]:
    """The replay figures per zone, at most ``REPLAY_CACHE_SECONDS`` old. When the
    console's sampler refreshes them in a worker thread (``caches.replay_in_background``)
    the document never reads the log on the event loop: it shows the latest figures (none
    until the first refresh); otherwise (tests, benchmarks) they are read here."""
    replay = node.replay
    if replay is None:
        return {}
    now = node.loop.time()
    if caches.replay is not None and (caches.replay_in_background
                                      or now - caches.replay[0] < REPLAY_CACHE_SECONDS):
        return caches.replay[1]
    if caches.replay_in_background:
        return {}
    try:
        stats, positions = read_replay_log(replay)
    except Exception:  # noqa: BLE001 - a closed or broken log: the console shows none
        return {}
    out = replay_figures(replay, stats, positions)
    caches.replay = (now, out)
    return out


def _counts(pairs: Iterable[tuple[Any, int | float]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, n in pairs:
        label = str(key[-1] if isinstance(key, tuple) else key)
        out[label] = out.get(label, 0) + int(n)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _count(rates: RateSeries, series: int, now: float) -> int:
    """Events of a series in the last minute; one that never counted costs nothing."""
    return rates.count(series, now) if rates.total(series) else 0


def _static_parts(node: Node, caches: Caches) -> tuple[list[tuple[str, str | None, str, int]],
                                                      list[dict[str, Any]]]:
    """What only a reload changes, computed once per topology: per endpoint (name, zone,
    relation, 1 for this node) and per zone its fixed keys and endpoints other than us."""
    topology = node.topology
    if caches.static is not None and caches.static[0] is topology:
        return caches.static[1], caches.static[2]
    endpoints = []
    for name in topology.endpoint_names:
        relation = topology.relation(name)
        endpoints.append((name, topology.zone_of(name),
                          relation.name.lower() if relation is not None else "other",
                          1 if relation is Relation.SELF else 0))
    zones = []
    me = node.name
    for name in topology.zone_names:
        spec = topology.zone(name)
        assert spec is not None
        zones.append({"name": name, "parent": spec.parent, "global": spec.global_,
                      "relation": topology.zone_relation(name),
                      "others": tuple(e for e in spec.endpoints if e != me),
                      "mine": me in spec.endpoints})
    caches.static = (topology, endpoints, zones)
    return endpoints, zones


def endpoint_rows(node: Node, caches: Caches, replay: dict[str, dict[str, Any]],
                  now: float) -> tuple[list[list[Any]], dict[str, float], list[int]]:
    """One row per configured endpoint (``ENDPOINT_COLUMNS``), the connected peers'
    certificate expiry by name, and the four last-minute counts summed (messages in/out,
    bytes in/out)."""
    statics, _ = _static_parts(node, caches)
    connections = node.connections
    stats_of = node.stats.get
    loop_now = node.loop.time()
    behind: dict[str, float] = {}
    for figures in replay.values():
        behind.update(figures["behind"])
    expiry: dict[str, float] = {}
    rows: list[list[Any]] = []
    sums = [0, 0, 0, 0]
    for name, zone, relation, is_self in statics:
        stats = stats_of(name)
        conn = connections.get(name)
        cert_expiry = None
        queue_bytes = queue_messages = 0
        direction = address = None
        connected = is_self
        if conn is not None:
            connected = 1
            cert_expiry = caches.expiry_of(conn)
            if cert_expiry is not None:
                expiry[name] = cert_expiry
            queue = conn.queue
            if queue is not None:
                queue_bytes = queue.bytes + conn.write_buffer_size
                queue_messages = len(queue)
            direction = _DIRECTION.get(conn.direction, conn.direction)
            address = conn.address
        if stats is not None:
            rates = stats.rates
            m_in, m_out = _count(rates, MSGS_IN, loop_now), _count(rates, MSGS_OUT, loop_now)
            b_in = _count(rates, BYTES_IN, loop_now)
            b_out = _count(rates, BYTES_OUT, loop_now)
            sums[0] += m_in
            sums[1] += m_out
            sums[2] += b_in
            sums[3] += b_out
            row = [name, zone, relation, connected, direction,
                   stats.connected_since if conn is not None else None,
                   stats.icinga_version, cert_expiry, address, m_in, m_out, b_in, b_out,
                   queue_bytes, queue_messages, sum(stats.received.values()),
                   sum(stats.sent.values()), stats.bytes_received, stats.bytes_sent,
                   stats.last_message_received,
                   sum(stats.refused.values()) if stats.refused else 0, behind.get(name)]
        else:
            row = [name, zone, relation, connected, direction, None, None, cert_expiry,
                   address, 0, 0, 0, 0, queue_bytes, queue_messages, 0, 0, 0, 0, None, 0,
                   behind.get(name)]
        rows.append(row)
    caches.prune(node.all_connections)
    return rows, expiry, sums


def zone_rows(node: Node, caches: Caches, replay: dict[str, dict[str, Any]], now: float
              ) -> list[dict[str, Any]]:
    """The zone tree: every zone with its parent, relation, health and lag."""
    _, statics = _static_parts(node, caches)
    # A session counts while the log is replayed to it (kept out of connected_names
    # meanwhile), as in /v1/status; its lag counts until the replay is done.
    sessions, live = node.connections, node.connected_names
    out = []
    for static in statics:
        others = static["others"]
        total = len(others)
        up = behind = 0
        for e in others:
            if e in sessions:
                up += 1
            if e not in live:
                behind += 1
        if total == 0:
            health = "self" if static["mine"] else "empty"
        elif static["relation"] == "other":
            # Known, not adjacent (the agents below a satellite, on a master): we never
            # connect to it, so it is not down; `router check cluster` skips it too
            # (it paged for every such agent; review).
            health = "other"
        else:
            health = "all" if up == total else ("some" if up else "none")
        name = static["name"]
        figures = replay.get(name)
        out.append({
            "name": name, "parent": static["parent"], "global": static["global"],
            "relation": static["relation"], "health": health, "up": up, "total": total,
            "log_lag": round(report.zone_log_lag(node, list(others), now), 3)
            if behind else 0.0,
            "replay_records": figures["records"] if figures else None,
            "replay_bytes": figures["bytes"] if figures else None,
            "replay_lag": round(figures["lag"], 3) if figures else None,
            "replaying": figures["replaying"] if figures else 0,
        })
    return out


def checks_section(node: Node) -> dict[str, Any] | None:
    """The check executors (running, queued) and the local scheduler, when present."""
    pool = node.executor.pool if node.executor is not None else (
        node.checks.pool if node.checks is not None else None)
    if pool is None:
        return None
    stats = pool.stats()
    return {key: stats.get(key) for key in ("state", "workers", "workers_ready", "running",
                                             "queued", "executed", "timeouts", "overflow",
                                             "max_concurrent", "max_queue")}


def writers_section(node: Node) -> Any:
    """The status document's ``writers`` section (its lag), when the node has one."""
    if "writers" not in report.STATUS_SECTIONS:
        return None
    try:
        return report.status_document(node, sections=("writers",)).get("writers")
    except Exception as exc:  # noqa: BLE001 - the console shows the error, not a 500
        return {"error": f"{type(exc).__name__}: {exc}"}


def console_document(node: Node, *, caches: Caches, sampler: Sampler | None = None,
                     since: float | None = None,
                     reload_status: Callable[[], dict[str, Any]] | None = None,
                     admin: bool = False, include_endpoints: bool = True) -> dict[str, Any]:
    """The ``/v1/console`` document (schema in docs/status-api.md)."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    parts: dict[str, float] = {}
    now = time.time()
    config = node.config
    replay = replay_by_zone(node, caches)
    parts["replay"] = time.perf_counter()
    zones = zone_rows(node, caches, replay, now)
    parts["zones"] = time.perf_counter()
    rows: list[list[Any]] = []
    expiry: dict[str, float] = {}
    if include_endpoints:
        rows, expiry, rates = endpoint_rows(node, caches, replay, now)
        parts["endpoints"] = time.perf_counter()
    else:
        for name, conn in node.connections.items():
            value = caches.expiry_of(conn)
            if value is not None:
                expiry[name] = value
        loop_now = node.loop.time()
        rates = [0, 0, 0, 0]
        for stats in node.stats.values():
            for series in (MSGS_IN, MSGS_OUT, BYTES_IN, BYTES_OUT):
                rates[series] += _count(stats.rates, series, loop_now)
    own_expiry = caches.own_certificate_expiry(config.tls.cert)
    reload = reload_status() if reload_status is not None else None
    now_totals = totals(node)
    writers = writers_section(node)
    refusals = _counts((key, n) for s in node.stats.values() for key, n in s.refused.items())
    doc: dict[str, Any] = {
        "version": 1,
        "generated": now,
        "node": {"name": node.name, "zone": node.topology.local_zone,
                 "role": report.role(node), "version": __version__,
                 "started": node.started, "uptime": now - node.started,
                 "cert_expiry": own_expiry},
        "admin": admin,
        "zones": zones,
        "endpoint_columns": ENDPOINT_COLUMNS,
        "endpoints": rows,
        "totals": {"msgs_in": now_totals.msgs_in, "msgs_out": now_totals.msgs_out,
                   "bytes_in": now_totals.bytes_in, "bytes_out": now_totals.bytes_out,
                   "msgs_in_rate": round(rates[0] / 60, 3),
                   "msgs_out_rate": round(rates[1] / 60, 3),
                   "bytes_in_rate": round(rates[2] / 60, 1),
                   "bytes_out_rate": round(rates[3] / 60, 1),
                   "connected": now_totals.connected,
                   # the endpoints we connect to (``router check cluster`` counts these)
                   "configured": sum(1 for e in _static_parts(node, caches)[0]
                                     if e[2] in ("peer", "parent", "child")),
                   "queue_bytes": now_totals.queue_bytes,
                   "check_results": node.check_results_received},
        "connections": report.connection_states(node),
        "handshake_failures": _counts(node.handshake_failures.items()),
        "refusals": refusals,
        "disconnects": _counts(node.disconnects.items()),
        "checks": checks_section(node),
        "writers": writers,
        "certificates": pending_requests(node, caches),
        "reload": reload,
        "problems": find_problems(zones, own_expiry, expiry, reload, now, writers=writers),
        "sample_columns": Sampler.SAMPLE_COLUMNS,
        "samples": sampler.since(since) if sampler is not None else [],
        "sample_interval": SAMPLE_INTERVAL,
    }
    done = time.perf_counter()
    doc["build_ms"] = round((done - started) * 1000, 2)
    # the build's CPU time in this thread (on a busy machine the wall clock also counts
    # waiting for a core) and where the wall clock went, for perf/bench_console.py
    doc["build_cpu_ms"] = round((time.thread_time() - cpu_started) * 1000, 2)
    last = started
    for name, at in list(parts.items()) + [("rest", done)]:
        parts[name] = round((at - last) * 1000, 2)
        last = at
    doc["build_parts_ms"] = parts
    return doc
