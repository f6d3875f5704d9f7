"""The configuration model: the frozen dataclasses of one router node, with their defaults.

Separate from parsing and validation so that code that only reads a configuration (the node,
its features, the TLS layer) depends on plain data. :class:`CheckSpec` is here too: a
``[[checks]]`` entry is part of the configuration, and the configuration sits below the
features that run the checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router.routing import EndpointSpec, ZoneSpec

__all__ = [
    "DEFAULT_PORT", "DEFAULT_LISTEN", "DEFAULT_STATUS_LISTEN", "DEFAULT_LOG_DURATION",
    "DEFAULT_ICINGA_VERSION", "LOG_LEVELS", "RESULTS_MODES", "UNKNOWN_MODES", "TLS_LIBRARIES",
    "KiB", "MiB",
    "FrozenMap", "NodeConfig", "TLSConfig", "Limits", "Timeouts", "ObjectsConfig", "CheckSpec",
    "RouterConfig", "PKIConfig", "StatusConfig", "WriterSpec", "WRITER_TYPES",
    "DEFAULT_GRAPHITE_HOST_TEMPLATE", "DEFAULT_GRAPHITE_SERVICE_TEMPLATE",
]


DEFAULT_PORT = 5665
"""Icinga's cluster port, used when an address has no port."""
DEFAULT_LISTEN = ("127.0.0.1", 5665)
DEFAULT_STATUS_LISTEN = ("127.0.0.1", 9665)
DEFAULT_LOG_DURATION = 86400.0
"""Icinga's default ``Endpoint.log_duration`` (1 day), in seconds."""
DEFAULT_ICINGA_VERSION = 21306
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RESULTS_MODES = ("auto", "on", "off")
UNKNOWN_MODES = ("learn", "reject")

KiB = 1024
MiB = 1024 * 1024

V = TypeVar("V")


class FrozenMap(Mapping[str, V]):
    """An immutable, hashable, picklable ``str -> value`` mapping (insertion ordered)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        self._data: dict[str, V] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._data,))


#: Check commands a node answers from its own state (``router.ops.health``), as Icinga's
#: ITL names them: a ``[[checks]]`` command needs no catalog entry for these.
BUILTIN_CHECK_COMMANDS = ("cluster", "cluster-zone")

@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Who this node is (``[node]``)."""

    name: str
    """Endpoint name of this node; also the CN of its certificate."""
    data_dir: str
    """State directory (absolute). Certificates default to ``DATA_DIR/certs/`` (Icinga's layout)."""
    icinga_version: int = DEFAULT_ICINGA_VERSION
    """Version announced in ``icinga::Hello`` (major*10000 + minor*100 + patch)."""
    accept_commands: bool = False
    """Whether this node accepts commands (``event::ExecuteCommand``) from its parents."""
    command_catalog: str | None = None
    """Extra check command definitions (TOML, absolute path) merged over the bundled
    catalog: new commands are added, ones with a bundled name replace it."""
    accept_config: bool = False
    """Whether this node takes zone configuration (``config::Update``) from its parent
    zone and relays it to the zones below (config sync, docs/config-sync.md)."""
    zones_dir: str | None = None
    """Our authoritative zone configuration (absolute path), laid out like Icinga's
    ``zones.d``: ``DIR/<zone>/**``, served to the zones below (config sync)."""
    log_format: str = "text"
    """Log line format on stderr: ``text`` or ``json`` (one object per line)."""


#: Values of ``[tls] library`` (see ``router.tlslib``).
TLS_LIBRARIES = ("bundled", "system")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Our certificate, key and the cluster CA (``[tls]``), as absolute paths."""

    ca: str
    """CA certificate (PEM) that every peer certificate must chain to."""
    cert: str
    """Our certificate (PEM); its CN must equal ``node.name``."""
    key: str
    """Our private key (PEM)."""
    library: str = "bundled"
    """TLS library of the node's sessions (``router.tlslib``): ``bundled`` (pyOpenSSL on
    the OpenSSL inside the cryptography wheel; cheaper handshakes) or ``system`` (Python's
    ``ssl`` on the distribution's OpenSSL; cheaper per message). See
    docs/configuration.md."""
    crl_file: str | None = None
    """Certificate revocation list (PEM, signed by ``ca``; what ``router ca revoke``
    writes), checked for the peer's certificate on every handshake; None: no revocation
    check."""

    @classmethod
    def for_node(cls, name: str, data_dir: str) -> TLSConfig:
        """Icinga's layout: ``DATA_DIR/certs/ca.crt``, ``NAME.crt``, ``NAME.key``."""
        certs = os.path.join(data_dir, "certs")
        return cls(ca=os.path.join(certs, "ca.crt"), cert=os.path.join(certs, f"{name}.crt"),
                   key=os.path.join(certs, f"{name}.key"))


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits (``[limits]``). Sizes in bytes, all strictly positive (but
    ``handshake_threads``, where 0 has a meaning)."""

    max_message_size_anonymous: int = 1 * MiB
    """Largest message accepted from a peer that is not a known endpoint (Icinga: 1 MiB)."""
    max_message_size_child: int = 16 * MiB
    """Largest message accepted from an endpoint of a child zone."""
    max_message_size_peer: int = 128 * MiB
    """Largest message accepted from a parent or an HA peer of our own zone."""
    max_json_depth: int = 128
    """Deepest JSON nesting accepted in a message."""
    max_config_update_bytes: int = 64 * MiB
    """Largest total size of the files in one ``config::Update`` we accept (config sync)."""
    send_queue_high_bytes: int = 8 * MiB
    """A peer's send queue is congested above this many bytes (sources are paused)."""
    send_queue_low_bytes: int = 2 * MiB
    """Paused sources resume once the queue is below this many bytes."""
    send_queue_high_messages: int = 20000
    """A peer's send queue is congested above this many messages."""
    send_queue_low_messages: int = 5000
    """Paused sources resume once the queue is below this many messages."""
    max_connections: int = 20000
    """Most simultaneous connections (authenticated and anonymous)."""
    max_anonymous_clients: int = 100
    """Most simultaneous connections from peers that are not known endpoints."""
    dial_concurrency: int = 64
    """Most outgoing connection attempts in flight at once."""
    handshake_threads: int = 0
    """Threads that run the TLS handshake computations (OpenSSL releases the GIL there),
    so a reconnect storm can use spare cores; 0 (default) runs them in the event-loop
    thread. Off by default: on a 2-core machine with the load generator on the other core
    it measured no faster and cost 10-20 % more CPU per handshake (perf/RESULTS.md)."""
    max_invalid_messages: int = 100
    """Messages with a parameter of the wrong JSON type a session may send per minute;
    each is refused, and a session over this budget is disconnected."""
    max_unauthenticated: int = 1000
    """Most idle unauthenticated connections (accepted, nothing received yet), in total;
    when full, the oldest of them is dropped for a newcomer. Handshakes in progress are
    not dropped for newcomers (their deadline bounds them)."""
    max_unauthenticated_per_address: int = 50
    """Most such idle connections from one source address; when full, that address's
    oldest idle one is dropped for its newcomer."""
    max_concurrent_handshakes: int = 200
    """Most TLS handshakes in progress at once (their bytes received, not yet done);
    handshakes beyond wait, their deadline still running."""
    admission_us_per_turn: int = 150
    """Most event-loop time (µs) one loop turn spends on inbound connections that are not
    sessions yet: accepting them, setting them up, their TLS handshake steps. Past it,
    handshake input waits unread for the next turn and further connections wait in the
    listen backlog, so established sessions get a turn between every slice of a
    connection flood; 0 turns it off (``router.transport.turnbudget``)."""
    new_connections_per_second: int = 0
    """Token bucket for new inbound handshakes: at most this many start a second, with
    bursts of ``new_connections_burst``; 0 (the default) turns it off. A handshake over
    the budget is not closed: it waits, unread, its deadline still running, and starts
    when a token comes. Off by default because, measured, it did not help: with 2 000
    agents of which 1 000 redial at once (``router perf --scenario stormload``, 2-core
    machine) the established agents' p99 during the storm was 30-55 ms without it and
    55-83 ms with 500/s or 200/s, while the storm lasted longer (1.5 s -> 2 s at 500/s;
    not over in 4 s at 200/s); at 5 000 agents the runs scattered both ways.
    ``max_concurrent_handshakes`` already bounds the handshakes in progress
    (perf/RESULTS.md)."""
    new_connections_burst: int = 100
    """Size of that bucket: handshakes that may start at once after a quiet while."""
    peer_bytes_per_second: int = 0
    """Most plaintext bytes a second the node reads from one session (authenticated or
    anonymous), with bursts of one second's worth; 0 (the default) turns it off. A session
    over it is not closed: its reading stops until the budget is repaid (TCP back-pressure
    towards the peer, nothing lost), counted in ``router_peer_throttled_total``. A size:
    ``"16MiB"`` or bytes."""
    peer_messages_per_second: int = 0
    """Most messages a second the node takes from one session, the same way; 0: off."""
    agent_receive_buffer: int = 32 * 1024
    """Kernel receive buffer (``SO_RCVBUF``) of each session with an agent (an endpoint of
    a child zone that has no child zones), set when the session starts; 0 leaves the
    kernel's autotuned default. The kernel doubles it for its bookkeeping. While
    back-pressure holds an agent's reading, its unread input waits in this buffer: with
    Linux's default (128 KiB) 10 000 held agents pinned 1.25 GB of kernel memory and put
    the host's TCP stack into memory pressure (``tcp_mem``), which drops packets on every
    connection, the parent link included (issue 22). An agent sends a few results a
    minute; 32 KiB still carries ~600 results/s over a 50 ms WAN link. A size:
    ``"32KiB"`` or bytes. Sessions that start after a reload get the new value."""
    status_max_clients: int = 64
    """Most connections the status listener serves at once; when full, the one waiting
    longest for an incomplete request head is dropped for a newcomer, else the newcomer
    gets 503. Read at start (a reload keeps the running listener's)."""
    max_results: int = 1_000_000
    """Most entries (host/service) in the result view; the oldest are evicted."""
    max_results_per_zone: int = 250_000
    """Most result-view entries for the hosts of one zone; that zone's oldest are evicted."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timers (``[timeouts]``), in seconds, all strictly positive."""

    handshake: float = 10.0
    """TLS handshake deadline (Icinga: 10 s)."""
    handshake_stall: float = 2.0
    """A handshake in progress that has received nothing for this long loses its slot
    (``max_concurrent_handshakes``) and is closed, when others wait for a slot: a
    ClientHello announced and never sent must not hold a slot for the whole deadline.
    Honest handshakes send their flights within milliseconds; bytes waiting unread in our
    own socket (a busy node) do not count as a stall."""
    unauthenticated_idle: float = 2.0
    """An accepted connection that has sent nothing for this long is idle: the caps on
    idle unauthenticated connections may drop it for a newcomer. Younger ones are let be,
    because in a reconnect storm the loop reads a fresh connection's ClientHello a moment
    after accepting it."""
    connect: float = 15.0
    """TCP connect deadline for outgoing connections; also the first-byte deadline."""
    heartbeat_interval: float = 20.0
    """Interval between ``event::Heartbeat`` messages we send (Icinga: 20 s)."""
    liveness: float = 60.0
    """A peer that sends nothing for this long is disconnected (Icinga: 60 s)."""
    anonymous: float = 10.0
    """An unauthenticated peer is disconnected this long after it connected (Icinga: 10 s)."""
    enrollment: float = 60.0
    """... unless it sent ``pki::RequestCertificate``: then it may stay this long."""
    reconnect_min: float = 1.0
    """First reconnect delay; it doubles (with full jitter) after each failure."""
    reconnect_max: float = 60.0
    """Upper bound of the reconnect delay."""
    slow_consumer: float = 60.0
    """A peer congested with no write progress for this long is disconnected."""
    status_header: float = 10.0
    """A status-listener client must send its complete request head within this long of
    connecting (or of its previous answer), else it is closed (slow headers, idle
    keep-alive). Read at start."""
    drain: float = 10.0
    """On shutdown, how long to wait for send queues to drain."""
    ha_cold_start: float = 30.0
    """Alone in an HA zone this soon after start, run no scheduled checks: the peer may be
    running them (Icinga: 30 s)."""


@dataclass(frozen=True, slots=True)
class ObjectsConfig:
    """Which zone each host object belongs to (``[objects]``)."""

    unknown: str = "reject"
    """``reject`` (default): messages about hosts no configuration places in a zone (and
    not named like a zone or endpoint) are refused; ``learn``: a host first reported by a
    child zone is placed in that zone, persisted in the data directory."""
    hosts: Mapping[str, str] = field(default_factory=FrozenMap)
    """Host name -> zone name (``[objects.hosts]``)."""
    max_learned_per_zone: int = 10_000
    """With ``learn``: most hosts one zone may own by learning; reports beyond are refused."""

    def __post_init__(self) -> None:
        if not isinstance(self.hosts, FrozenMap):
            object.__setattr__(self, "hosts", FrozenMap(self.hosts))


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One locally scheduled check (``[[checks]]`` in the configuration)."""

    host: str
    command: str
    service: str | None = None
    macros: Mapping[str, Any] = field(default_factory=dict)
    #: Seconds between checks while OK or HARD (Icinga's default check_interval is 5 m).
    interval: float = 300.0
    #: Seconds between retries while in a SOFT problem state (Icinga: 1 m).
    retry_interval: float = 60.0
    max_check_attempts: int = 3
    #: Run it on this endpoint (a direct child or a zone peer) instead of locally.
    command_endpoint: str | None = None
    #: The object's zone; None means the node's own zone.
    zone: str | None = None

    @property
    def name(self) -> str:
        """Icinga's full object name: ``host`` or ``host!service``."""
        return self.host if self.service is None else f"{self.host}!{self.service}"


@dataclass(frozen=True, slots=True)
class PKIConfig:
    """Certificate enrollment (``[pki]``; see docs/pki.md)."""

    ticket_salt: str = ""
    """Icinga's TicketSalt: a request with the ticket for its CN is signed at once (on
    the node that holds ``DATA_DIR/ca/ca.key``). Empty: every new request waits for
    ``router ca sign``. ``router serve --ticket-salt`` overrides it; when both are
    empty the environment variable ``ROUTER_TICKET_SALT`` is used."""
    leaf_valid_days: int = 397
    """Validity of the certificates this node signs (Icinga 2.13.3+: 397 days)."""
    min_rsa_bits: int = 2048
    """Requests with a smaller RSA key are refused."""
    ec_curves: tuple[str, ...] = ("secp256r1", "secp384r1", "secp521r1")
    """Curves of EC keys that are signed; other curves are refused."""
    max_pending_requests: int = 10000
    """Most stored requests without a certificate; new ones beyond it are refused."""
    requests_per_minute: int = 30
    """Certificate requests one address may send per minute without a known endpoint
    (anonymous enrollment); the excess is refused and counted."""
    renew_with_new_key: bool = True
    renew_before_days: int = 30
    """Renew our own certificate this many days before it expires, and answer a peer's
    request for a certificate that expires sooner with a new one (Icinga: 30 days)."""
    """Renew our own certificate with a new key (same type and size, within
    ``min_rsa_bits``/``ec_curves``); false: re-sign the current key, as Icinga does."""


#: Values of ``[[writers]] type`` (see docs/writers.md).
WRITER_TYPES = ("graphite", "influxdb", "postgresql")
DEFAULT_GRAPHITE_HOST_TEMPLATE = "icinga2.$host.name$.host.$host.check_command$"
DEFAULT_GRAPHITE_SERVICE_TEMPLATE = \
    "icinga2.$host.name$.services.$service.name$.$service.check_command$"


def _influx_template(measurement: str, **tags: str) -> FrozenMap[Any]:
    return FrozenMap({"measurement": measurement, "tags": FrozenMap(tags)})


@dataclass(frozen=True, slots=True)
class WriterSpec:
    """One result writer (``[[writers]]``; docs/writers.md). Options of other types than
    ``type`` keep their defaults and are ignored."""

    name: str
    """Unique name: metric label and queue directory ``DATA_DIR/writers/NAME/``."""
    type: str
    """``graphite``, ``influxdb`` or ``postgresql``."""
    flush_interval: float = 1.0
    """Write a partial batch at the latest this many seconds after its first record."""
    flush_threshold: int = 1024
    """Write as soon as this many records are waiting (most records per batch)."""
    max_backlog_bytes: int = 256 * MiB
    """Durable queue bound: beyond it the oldest records are evicted (counted)."""
    max_backlog_age: float = 86400.0
    """Records older than this are evicted (counted)."""
    timeout: float = 10.0
    """Deadline of one connect or write to the backend."""
    host: str = "127.0.0.1"
    """graphite: carbon's host."""
    port: int = 2003
    """graphite: carbon's plaintext (line) port."""
    host_name_template: str = DEFAULT_GRAPHITE_HOST_TEMPLATE
    """graphite: metric prefix of host check results (Icinga's default)."""
    service_name_template: str = DEFAULT_GRAPHITE_SERVICE_TEMPLATE
    """graphite: metric prefix of service check results (Icinga's default)."""
    enable_send_thresholds: bool = False
    """graphite, influxdb: also send warn/crit/min/max (influxdb: and unit)."""
    enable_send_metadata: bool = False
    """graphite, influxdb: also send state, latency, execution_time, ..."""
    url: str = "http://127.0.0.1:8086"
    """influxdb: base URL of the 1.x HTTP API."""
    database: str = "icinga2"
    """influxdb: database name (Icinga's default)."""
    username: str | None = None
    """influxdb: basic-auth user."""
    password: str | None = None
    """influxdb: basic-auth password."""
    host_template: Mapping[str, Any] = field(
        default_factory=lambda: _influx_template("$host.check_command$", hostname="$host.name$"))
    """influxdb: ``measurement`` and ``tags`` of host check results (Icinga's default)."""
    service_template: Mapping[str, Any] = field(
        default_factory=lambda: _influx_template("$service.check_command$",
                                                 hostname="$host.name$",
                                                 service="$service.name$"))
    """influxdb: ``measurement`` and ``tags`` of service check results (Icinga's default)."""
    dsn: str | None = None
    """postgresql: libpq connection string or URI."""
    enable_ha: bool = True
    """postgresql: in an HA zone only one endpoint writes (the IDO's rule)."""
    failover_timeout: float = 60.0
    """postgresql: take over when the active writer's heartbeat is older than this."""


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """The status listener's options (``[status]``; see docs/console.md)."""

    admin_token: str = ""
    """Bearer token that enables the web console's actions (sign a certificate request,
    reload). Empty: the environment variable ``ROUTER_ADMIN_TOKEN`` is used; when both are
    empty the console is read-only and every action answers 403."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """The whole, validated configuration of one router node."""

    node: NodeConfig
    """This node (``[node]``)."""
    listen: tuple[str, int] | None
    """Cluster listener (host, port); ``None`` for an outbound-only node."""
    status_listen: tuple[str, int] | None
    """Plain-HTTP status/metrics listener (host, port); ``None`` to disable it."""
    tls: TLSConfig
    """Certificate, key and CA (absolute paths)."""
    zones: tuple[ZoneSpec, ...] = ()
    """The zone tree, in file order."""
    endpoints: tuple[EndpointSpec, ...] = ()
    """Every known endpoint, in file order."""
    limits: Limits = field(default_factory=Limits)
    """Resource limits."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """Timers."""
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    """Host-to-zone assignment."""
    results: str = "auto"
    """Keep the latest check result per host/service: ``on``, ``off`` or ``auto`` (only
    when the node's zone has no parent, i.e. on a top-level master)."""
    log_level: str = "info"
    """One of ``debug``, ``info``, ``warning``, ``error``, ``critical``."""
    path: str | None = None
    """The file this configuration came from, if any."""
    endpoint_log_duration: Mapping[str, float] = field(default_factory=FrozenMap)
    """Replay-log retention per endpoint in seconds (Icinga ``log_duration``); every endpoint
    has an entry (default 86400, 0 disables the replay log for it)."""
    checks: tuple[CheckSpec, ...] = ()
    """Checks this node schedules itself (``[[checks]]``)."""
    pki: PKIConfig = field(default_factory=PKIConfig)
    """Certificate enrollment: ticket salt, signing policy, request limits."""
    status: StatusConfig = field(default_factory=StatusConfig)
    """The status listener's options (the console's admin token)."""
    writers: tuple[WriterSpec, ...] = ()
    """Result writers (``[[writers]]``: Graphite, InfluxDB, PostgreSQL)."""

    def __post_init__(self) -> None:
        if not isinstance(self.zones, tuple):
            object.__setattr__(self, "zones", tuple(self.zones))
        if not isinstance(self.endpoints, tuple):
            object.__setattr__(self, "endpoints", tuple(self.endpoints))
        given = dict(self.endpoint_log_duration)
        full = {e.name: given.pop(e.name, DEFAULT_LOG_DURATION) for e in self.endpoints}
        full.update(given)              # unknown names are kept so that validate() reports them
        object.__setattr__(self, "endpoint_log_duration", FrozenMap(full))

    def log_duration(self, endpoint: str) -> float:
        """Replay-log retention for ``endpoint`` in seconds."""
        return self.endpoint_log_duration.get(endpoint, DEFAULT_LOG_DURATION)

    def zone_of(self, endpoint: str) -> ZoneSpec | None:
        """The zone that lists ``endpoint``, or ``None``."""
        for z in self.zones:
            if endpoint in z.endpoints:
                return z
        return None

    def keeps_results(self) -> bool:
        """``results`` resolved: ``auto`` means on only when our zone has no parent."""
        if self.results != "auto":
            return self.results == "on"
        zone = self.zone_of(self.node.name)
        return zone is not None and zone.parent is None
