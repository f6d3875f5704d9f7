"""Metric primitives: the node's own data model of what ``/metrics`` exports.

Nothing here touches the network and nothing on the hot path needs a third-party
library: the node keeps plain counters (:class:`LabeledCounter`, ints) and
:class:`RateSeries` ring buffers, and only when ``/metrics`` is scraped it builds a list
of :class:`MetricFamily`, which :mod:`router.ops.exposition` hands to prometheus_client
for rendering (Prometheus text format or OpenMetrics).

:data:`CATALOG` names every metric the router exports, with its type, help text and label
names; ``docs/status-api.md`` documents the same list (a test keeps both in sync).
:func:`family` builds a :class:`MetricFamily` from the catalog so the help text lives in
one place.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, ItemsView, Iterable, Iterator, Literal, Sequence, TypeVar

__all__ = [
    "MetricFamily",
    "MetricSpec",
    "CATALOG",
    "family",
    "LabeledCounter",
    "RateSeries",
    "process_families",
    "process_info",
]

MetricType = Literal["counter", "gauge", "histogram"]
Sample = tuple[dict[str, str], float]
Key = tuple[Any, ...]
_T = TypeVar("_T")


@dataclass(slots=True)
class MetricFamily:
    """One metric name with its help text, type and samples (label set, value)."""

    name: str
    type: MetricType
    help: str
    samples: list[Sample] = field(default_factory=list)
    #: Samples whose name extends the family's (``_bucket``, ``_sum``, ``_count`` of a
    #: histogram): (suffix, labels, value).
    suffixed: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Catalog entry: what a metric is called, its type, help text and label names."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()


CATALOG: tuple[MetricSpec, ...] = (
    # -- node
    MetricSpec("router_info", "gauge",
               "Constant 1, labelled with the local endpoint, zone, role and router version.",
               ("endpoint", "zone", "role", "version")),
    MetricSpec("router_start_time_seconds", "gauge",
               "Unix time at which the router started."),
    MetricSpec("router_reloads_total", "counter",
               "Configuration reloads (SIGHUP, router reload), by result: ok, refused "
               "(invalid configuration or TLS files; the node kept the old one), failed, "
               "busy (another reload was running).", ("result",)),
    MetricSpec("router_console_actions_total", "counter",
               "Web console actions (sign, reload) by result: ok, forbidden (no admin "
               "token configured, or a missing or wrong one), invalid, not_found, "
               "conflict, failed.", ("action", "result")),
    # -- connections
    MetricSpec("router_connections", "gauge",
               "Open cluster connections by state (handshaking, anonymous, established).",
               ("state",)),
    MetricSpec("router_peer_connected", "gauge",
               "1 when the endpoint has an established connection, else 0.",
               ("endpoint", "zone", "relation")),
    MetricSpec("router_zone_connected", "gauge",
               "1 when at least one endpoint of the zone is connected (the local zone "
               "counts itself), else 0.",
               ("zone", "relation")),
    MetricSpec("router_connections_accepted_total", "counter",
               "Inbound TCP connections accepted on the cluster listener."),
    MetricSpec("router_connections_rejected_total", "counter",
               "Inbound connections closed at accept, by reason (closed_before_data: the "
               "peer had closed or reset it before sending a byte).",
               ("reason",)),
    MetricSpec("router_status_clients", "gauge",
               "Connections the status listener serves now."),
    MetricSpec("router_status_clients_evicted_total", "counter",
               "Status connections with an incomplete request head dropped for a newcomer "
               "because the listener was full ([limits] status_max_clients)."),
    MetricSpec("router_status_timeouts_total", "counter",
               "Status connections closed without a complete request head within "
               "[timeouts] status_header, or not reading their response."),
    MetricSpec("router_status_rejected_total", "counter",
               "Status connections refused with 503 or closed at once: the listener was "
               "full."),
    MetricSpec("router_accept_errors_total", "counter",
               "accept() failures on the cluster listener, by reason (emfile, enfile, "
               "enobufs, enomem: it pauses accepting a moment; econnaborted: the peer "
               "reset while it waited).", ("reason",)),
    MetricSpec("router_connect_attempts_total", "counter",
               "Outbound connection attempts, by endpoint.", ("endpoint",)),
    MetricSpec("router_connect_failures_total", "counter",
               "Outbound connection attempts that failed, by endpoint.", ("endpoint",)),
    MetricSpec("router_unauthenticated_connections", "gauge",
               "Inbound connections that have not finished the TLS handshake yet."),
    MetricSpec("router_unauthenticated_evicted_total", "counter",
               "Unauthenticated connections dropped for a newcomer, by the cap that was full "
               "(per_address, total, max_connections).", ("reason",)),
    MetricSpec("router_handshakes_in_progress", "gauge",
               "Inbound TLS handshakes holding one of limits.max_concurrent_handshakes."),
    MetricSpec("router_handshakes_waiting", "gauge",
               "Inbound TLS handshakes waiting for a free handshake slot."),
    MetricSpec("router_handshake_waits_total", "counter",
               "Inbound TLS handshakes that had to wait for a free handshake slot."),
    MetricSpec("router_admission_deferred_total", "counter",
               "Pieces of work on inbound connections not yet sessions (a handshake step, "
               "a slot handed over) put off to a later loop turn by "
               "limits.admission_us_per_turn."),
    MetricSpec("router_admission_deferred_turns_total", "counter",
               "Loop turns that ended with such work still waiting."),
    MetricSpec("router_handshakes_rate_limited_total", "counter",
               "Inbound TLS handshakes that waited for a token of "
               "limits.new_connections_per_second."),
    MetricSpec("router_handshake_failures_total", "counter",
               "TLS or identification handshakes that failed, by reason.", ("reason",)),
    MetricSpec("router_tls_context_rebuilds_total", "counter",
               "TLS contexts rebuilt from disk after a streak of identical handshake "
               "failures, by result (ok, failed: the files did not load, old one kept).",
               ("result",)),
    MetricSpec("router_disconnects_total", "counter",
               "Established connections that ended, by endpoint and reason.",
               ("endpoint", "reason")),
    MetricSpec("router_protocol_errors_total", "counter",
               "Connections closed because the peer broke the wire protocol, by reason.",
               ("reason",)),
    # -- messages
    MetricSpec("router_messages_received_total", "counter",
               "JSON-RPC messages received, by sending endpoint and method.",
               ("endpoint", "method")),
    MetricSpec("router_messages_sent_total", "counter",
               "JSON-RPC messages sent (relayed or originated), by target endpoint and method.",
               ("endpoint", "method")),
    MetricSpec("router_messages_refused_total", "counter",
               "Messages refused by the routing rules, by sending endpoint, method and "
               "reason.",
               ("endpoint", "method", "reason")),
    MetricSpec("router_messages_unreachable_total", "counter",
               "Messages whose target zone had endpoints but none connected, by zone.",
               ("zone",)),
    MetricSpec("router_bytes_received_total", "counter",
               "Payload bytes received (TLS plaintext), by endpoint.", ("endpoint",)),
    MetricSpec("router_bytes_sent_total", "counter",
               "Payload bytes sent (TLS plaintext), by endpoint.", ("endpoint",)),
    MetricSpec("router_messages_received_per_second", "gauge",
               "Messages received per second from the endpoint, averaged over 60 s "
               "(as Icinga's messages_received_per_second).",
               ("endpoint",)),
    MetricSpec("router_messages_sent_per_second", "gauge",
               "Messages sent per second to the endpoint, averaged over 60 s.",
               ("endpoint",)),
    MetricSpec("router_check_results_total", "counter",
               "event::CheckResult messages accepted by the router."),
    # -- send queues
    MetricSpec("router_send_queue_bytes", "gauge",
               "Bytes waiting in the endpoint's send queue.", ("endpoint",)),
    MetricSpec("router_send_queue_messages", "gauge",
               "Messages waiting in the endpoint's send queue.", ("endpoint",)),
    MetricSpec("router_send_queue_coalesced_total", "counter",
               "Superseded check results dropped from a congested send queue.",
               ("endpoint",)),
    MetricSpec("router_send_queue_congested_total", "counter",
               "Times the endpoint's send queue crossed its high-water mark.",
               ("endpoint",)),
    MetricSpec("router_unconfirmed_bytes", "gauge",
               "Logged messages written to the endpoint that it has not confirmed with "
               "log::SetLogPosition yet; kept in memory and put into the replay log if "
               "the connection drops.", ("endpoint",)),
    MetricSpec("router_unconfirmed_overflow_total", "counter",
               "Written logged messages that left the unconfirmed window (32 MiB) before "
               "the endpoint confirmed them: a drop would lose them.", ("endpoint",)),
    MetricSpec("router_log_positions_ignored_total", "counter",
               "log::SetLogPosition values that confirmed nothing: the whole-second "
               "marker Icinga sends while replaying its own log, or a position newer "
               "than any stamp of ours (listed once non-zero).", ("endpoint",)),
    MetricSpec("router_peer_throttled_total", "counter",
               "Times a session's input went over [limits] peer_bytes_per_second or "
               "peer_messages_per_second and its reading stopped (listed once non-zero).",
               ("endpoint",)),
    MetricSpec("router_peer_throttled_seconds_total", "counter",
               "Seconds a session's reading was held back by those caps.", ("endpoint",)),
    MetricSpec("router_slow_consumer_disconnects_total", "counter",
               "Peers disconnected because their send queue made no progress for the "
               "slow-consumer timeout.",
               ("endpoint",)),
    MetricSpec("router_reading_paused", "gauge",
               "Connections whose reading is paused by back-pressure."),
    MetricSpec("router_read_waiting", "gauge",
               "Connections that read and wait for their next turn to read (many only "
               "when the node reads at its per-turn input budget)."),
    MetricSpec("router_read_deferred_turns_total", "counter",
               "Event-loop turns that ended with connections still waiting to read: "
               "the node was reading as fast as its input budget allows."),
    MetricSpec("router_read_stalls_total", "counter",
               "Connections found with unread input for 5 s although nothing held their "
               "reading back (a lost wake-up); each was made to read again and logged."),
    # -- object zones
    MetricSpec("router_objects_learned", "gauge",
               "Host-to-zone assignments learned from traffic."),
    MetricSpec("router_check_results_evicted_total", "counter",
               "Result-view entries evicted by limits.max_results or "
               "limits.max_results_per_zone, by the zone of their host.", ("zone",)),
    MetricSpec("router_objects_learn_refused_total", "counter",
               "Hosts a child zone reported but could not learn because the zone already "
               "owns objects.max_learned_per_zone learned hosts, by zone.", ("zone",)),
    MetricSpec("router_check_results_stored", "gauge",
               "Check results held in the result view."),
    # -- replay log
    MetricSpec("router_replay_log_bytes", "gauge",
               "Bytes of messages held in the replay log (all zones)."),
    MetricSpec("router_replay_log_records", "gauge",
               "Messages held in the replay log for a zone whose endpoints were away.",
               ("zone",)),
    MetricSpec("router_replay_lag_seconds", "gauge",
               "Newest logged message for the endpoint's zone minus the position the "
               "endpoint confirmed (0 when it has everything).", ("endpoint",)),
    MetricSpec("router_replay_evicted_total", "counter",
               "Messages evicted from the replay log by the byte cap or a full map.",
               ("zone",)),
    MetricSpec("router_replay_persisted_total", "counter",
               "Messages written to the replay log."),
    MetricSpec("router_replay_write_failures_total", "counter",
               "Messages the replay log could not keep, by reason: storage (disk full "
               "after evicting, read-only or failing file system), backlog (the writer "
               "fell behind), too_large (bigger than the whole map). Logged, "
               "rate-limited.", ("reason",)),
    MetricSpec("router_replay_read_failures_total", "counter",
               "Replays stopped by a damaged page in the replay log: the endpoint gets "
               "live traffic, the unreadable rest stays in the file (logged with the "
               "recovery command)."),
    MetricSpec("router_replay_replayed_total", "counter",
               "Logged messages replayed to an endpoint after it came back.", ("endpoint",)),
    MetricSpec("router_replay_duplicates_dropped_total", "counter",
               "Messages dropped because this node had already processed them (a replay "
               "after a reconnect or a restart: their ts, or the ts where they entered our "
               "chain of nodes, is not newer than what it processed), by the peer that "
               "sent them.", ("peer",)),
    MetricSpec("router_processed_positions_saves_total", "counter",
               "Checkpoints of the positions this node processed, per origin, saved to "
               "disk (result ok) or not (failed: retried with the next checkpoint).",
               ("result",)),
    MetricSpec("router_processed_positions_unsaved_seconds", "gauge",
               "How long the oldest checkpoint of processed positions has waited to be "
               "saved (0: none waits). Meanwhile nothing new is confirmed to the peers; "
               "logged with its cause after 30 s."),
    MetricSpec("router_replay_in_progress", "gauge",
               "Messages replayed so far to an endpoint whose replay is running (absent "
               "when none runs).", ("endpoint",)),
    # -- certificate enrollment
    MetricSpec("router_csr_requests_total", "counter",
               "pki::RequestCertificate handled, by result (signed, pending, forwarded, "
               "invalid_ticket, declined, refused).", ("result",)),
    MetricSpec("router_csr_pending", "gauge",
               "Stored certificate requests without a signed certificate."),
    MetricSpec("router_cert_expiry_seconds", "gauge",
               "Seconds until the certificate expires: this node's own and each connected "
               "endpoint's (negative once expired).", ("endpoint",)),
    # -- check executors (only when accept_commands is on)
    MetricSpec("router_checks_running", "gauge",
               "Checks running on the executor processes."),
    MetricSpec("router_checks_queued", "gauge",
               "Checks waiting for a free slot (beyond the concurrency cap)."),
    MetricSpec("router_checks_executed_total", "counter",
               "Checks the executors ran to an outcome."),
    MetricSpec("router_check_timeouts_total", "counter",
               "Checks killed at their timeout."),
    MetricSpec("router_check_overflow_total", "counter",
               "Checks answered UNKNOWN at once because the check queue was full."),
    MetricSpec("router_check_executors_lost_total", "counter",
               "Checks answered UNKNOWN because their executor process died."),
    MetricSpec("router_check_executor_restarts_total", "counter",
               "Executor processes restarted after they died."),
    MetricSpec("router_checks_expired_total", "counter",
               "Checks not started: their deadline passed while they waited in the queue."),
    MetricSpec("router_check_queue_wait_seconds", "histogram",
               "Time a check waited for a free slot before it was sent to an executor."),
    MetricSpec("router_checks_scheduled_total", "counter",
               "Scheduled checks this node started (it was authoritative for them)."),
    MetricSpec("router_check_handovers_total", "counter",
               "Checks whose HA authority moved to or away from this node."),
    MetricSpec("router_check_remote_sent_total", "counter",
               "event::ExecuteCommand sent to command endpoints for scheduled checks."),
    MetricSpec("router_check_schedule_latency_seconds", "histogram",
               "How late a scheduled check started compared with its planned time."),
    MetricSpec("router_tls_handshake_received_bytes", "histogram",
               "Bytes received from a peer during one TLS handshake (its hello, "
               "certificate chain, finish), per finished or failed handshake."),
    MetricSpec("router_tls_handshake_sent_bytes", "histogram",
               "Bytes sent to a peer during one TLS handshake."),
    # -- config sync (only when accept_config or zones_dir is set)
    MetricSpec("router_config_updates_total", "counter",
               "Zone configuration updates by direction (received, sent, read) and result.",
               ("direction", "result")),
    # -- result writers (only with [[writers]]; docs/writers.md)
    MetricSpec("router_writer_points_total", "counter",
               "Check results per writer by result: written (the backend confirmed them), "
               "evicted (over max_backlog_bytes or max_backlog_age), dropped (the queue "
               "disk could not keep up), invalid (not a usable check result).",
               ("writer", "result")),
    MetricSpec("router_writer_backlog", "gauge",
               "Check results in the writer's durable queue, not yet written.", ("writer",)),
    MetricSpec("router_writer_lag_seconds", "gauge",
               "Age of the oldest check result the writer has not written yet (0: none).",
               ("writer",)),
    MetricSpec("router_writer_active", "gauge",
               "1 when this node writes to the backend now (connected, and for PostgreSQL "
               "with enable_ha: holds the HA role).", ("writer",)),
    MetricSpec("router_writer_errors_total", "counter",
               "Writer errors by reason: connect, timeout, send, closed, http_NNN, auth, "
               "database, perfdata (an unparsable value, skipped), refused_point, "
               "invalid_record, queue, ...", ("writer", "reason")),
    # -- process
    MetricSpec("router_process_resident_memory_bytes", "gauge",
               "Resident set size of the router process in bytes."),
    MetricSpec("router_process_cpu_seconds_total", "counter",
               "User plus system CPU time consumed by the router process, in seconds."),
    MetricSpec("router_process_open_fds", "gauge",
               "Open file descriptors of the router process."),
    MetricSpec("router_process_threads", "gauge",
               "Threads of the router process."),
    MetricSpec("router_process_start_time_seconds", "gauge",
               "Unix time at which the router process started."),
)

_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}


def family(name: str, samples: Sequence[Sample] | None = None) -> MetricFamily:
    """A :class:`MetricFamily` for catalog metric ``name`` (KeyError if not catalogued).

    A list of samples is used as it is (not copied)."""
    spec = _BY_NAME[name]
    if samples is None:
        samples = []
    elif not isinstance(samples, list):
        samples = list(samples)
    return MetricFamily(spec.name, spec.type, spec.help, samples)


# --------------------------------------------------------------------------- counters


class LabeledCounter:
    """Counter values keyed by a tuple of label values; ``inc`` is one dict get and set.

    >>> c = LabeledCounter(("endpoint", "reason"))
    >>> c.inc(("sat1", "not_allowed"))
    >>> list(c.items())
    [(('sat1', 'not_allowed'), 1)]
    """

    __slots__ = ("label_names", "_values")

    def __init__(self, label_names: Iterable[str]) -> None:
        self.label_names: tuple[str, ...] = tuple(label_names)
        self._values: dict[Key, int | float] = {}

    def inc(self, key: Key, n: int | float = 1) -> None:
        values = self._values
        values[key] = values.get(key, 0) + n

    def get(self, key: Key, default: int | float = 0) -> int | float:
        return self._values.get(key, default)

    def items(self) -> ItemsView[Key, int | float]:
        return self._values.items()

    def total(self) -> int | float:
        return sum(self._values.values())

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._values)

    def samples(self) -> list[Sample]:
        """Samples for a :class:`MetricFamily`, labels zipped with ``label_names``."""
        names = self.label_names
        return [({n: str(v) for n, v in zip(names, key)}, value)
                for key, value in self._values.items()]

    def to_family(self, name: str, help: str | None = None,
                  type: MetricType = "counter") -> MetricFamily:
        """Build a family; without ``help`` the catalog entry for ``name`` is used."""
        if help is None:
            fam = family(name, self.samples())
            return fam
        return MetricFamily(name, type, help, self.samples())


class Histogram:
    """Counts of observed values in fixed buckets, kept as plain ints (one list index per
    observation), rendered at scrape time as a Prometheus histogram."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def data(self) -> dict[str, Any]:
        """``{"buckets": {le: cumulative count}, "sum", "count"}``."""
        cumulative, total = [], 0
        for n in self.counts:
            total += n
            cumulative.append(total)
        les = [f"{b:g}" for b in self.bounds] + ["+Inf"]
        return {"buckets": dict(zip(les, cumulative)), "sum": self.sum, "count": total}


class RateSeries:
    """Events per second of ``n`` series (an endpoint's messages in and out, bytes in
    and out) over one sliding 60 s window of 1-second buckets.

    ``add`` is O(1) amortised (moving to a new second clears the buckets skipped, at most
    60 per series, and a gap of 60 s or more clears everything at once). ``rate`` is the
    window sum divided by 60, as Icinga computes ``messages_*_per_second``. Time is passed
    in (any clock in seconds, normally ``loop.time()``). A timestamp older than the
    current second is counted in the current second (clocks may step back).

    Why one object for all of an endpoint's series: every object here is one the
    garbage collector walks in a full collection, and at 10 000 connections four meters
    and four bucket arrays per endpoint were 80 000 of the 330 000 it walked (issue 22:
    its full collections took 60-95 ms there); now three per endpoint. The buckets are
    one array of 4-byte counters (at most 4 billion events or 4 GiB in one second of one
    series), the window sums and lifetime totals another, both made by the first
    ``add``: a peer that exchanges no messages pays nothing.
    """

    WINDOW = 60

    __slots__ = ("_buckets", "_counters", "_head", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        #: series i, second s: [i * WINDOW + s % WINDOW]
        self._buckets: array[int] | None = None
        #: [i]: series i's sum over the window; [n + i]: its lifetime total
        self._counters: array[int] | None = None
        self._head: int | None = None     # the second the newest buckets belong to

    def _advance(self, sec: int) -> None:
        head = self._head
        buckets, counters = self._buckets, self._counters
        if head is None or buckets is None or counters is None:   # nothing counted yet
            self._head = sec if head is None or sec > head else head
            return
        if sec <= head:
            return
        window = self.WINDOW
        if sec - head >= window:
            for j in range(len(buckets)):
                buckets[j] = 0
            for i in range(self.n):
                counters[i] = 0
        else:
            for s in range(head + 1, sec + 1):
                slot = s % window
                for i in range(self.n):
                    j = i * window + slot
                    counters[i] -= buckets[j]
                    buckets[j] = 0
        self._head = sec

    def add(self, series: int, now: float, k: int = 1) -> None:
        self._advance(int(now))
        buckets, counters = self._buckets, self._counters
        if buckets is None or counters is None:
            buckets = self._buckets = array("I", bytes(4 * self.WINDOW * self.n))
            counters = self._counters = array("Q", bytes(16 * self.n))
        head = self._head
        assert head is not None
        buckets[series * self.WINDOW + head % self.WINDOW] += k
        counters[series] += k
        counters[self.n + series] += k

    def total(self, series: int) -> int:
        """Lifetime count of ``series``."""
        return self._counters[self.n + series] if self._counters is not None else 0

    def count(self, series: int, now: float) -> int:
        """Events of ``series`` in the window ending at ``now`` (this second included)."""
        self._advance(int(now))
        return self._counters[series] if self._counters is not None else 0

    def rate(self, series: int, now: float) -> float:
        return self.count(series, now) / self.WINDOW


# --------------------------------------------------------------------------- process

_PROCESS: Any = None


def _own_process() -> Any:
    global _PROCESS
    import psutil  # imported lazily: only scrapes and status pages need it

    if _PROCESS is None or _PROCESS.pid != os.getpid():
        _PROCESS = psutil.Process()
    return _PROCESS


def _fresh_start_time() -> float:
    import psutil

    return float(psutil.Process().create_time())


def _safe(call: Callable[[], _T]) -> _T | None:
    try:
        return call()
    except Exception:  # psutil.Error, NotImplementedError, AttributeError on some OSes
        return None


def process_info(process: Any = None) -> dict[str, Any]:
    """Process numbers for ``/v1/status``: ``rss_bytes``, ``cpu_seconds``, ``open_fds``,
    ``threads``, ``start_time``; a value is ``None`` when the OS does not provide it."""
    proc = process if process is not None else _own_process()
    # psutil computes a Process's start time (boot time + ticks) once, when the object is
    # made; the cached object of this process would keep a value from before a step of
    # the wall clock (NTP), and time() - start_time would be off by the step.
    start_time = proc.create_time if process is not None else _fresh_start_time
    mem = _safe(proc.memory_info)
    cpu = _safe(proc.cpu_times)
    return {
        "rss_bytes": mem.rss if mem is not None else None,
        "cpu_seconds": (cpu.user + cpu.system) if cpu is not None else None,
        "open_fds": _safe(proc.num_fds) if hasattr(proc, "num_fds") else None,
        "threads": _safe(proc.num_threads),
        "start_time": _safe(start_time),
    }


def process_families(process: Any = None) -> list[MetricFamily]:
    """The ``router_process_*`` families from psutil (a family without a value when the
    OS does not provide one)."""
    info = process_info(process)

    def fam(name: str, value: float | None) -> MetricFamily:
        return family(name, [({}, value)] if value is not None else [])

    return [
        fam("router_process_resident_memory_bytes", info["rss_bytes"]),
        fam("router_process_cpu_seconds_total", info["cpu_seconds"]),
        fam("router_process_open_fds", info["open_fds"]),
        fam("router_process_threads", info["threads"]),
        fam("router_process_start_time_seconds", info["start_time"]),
    ]
